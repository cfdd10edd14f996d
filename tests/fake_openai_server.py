"""A tiny OpenAI-compatible chat completions server on 127.0.0.1, for tests only.

It answers `POST .../chat/completions` in the format DSPy's adapter asked for (the output
fields named in the last user message), records every request (headers included), and can
be told to fail the next calls with a given HTTP status.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FIELD = re.compile(r"\[\[ ## (\w+) ## \]\]")
JSON_FIELDS = re.compile(r"`(\w+)`")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (a timeout test) closes the connection under a slow
        # answer: not an error of the fake server.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FakeOpenAI:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.failures: list[tuple[int, str]] = []
        self.answers: dict[str, Any] = {}
        self.delays: list[float] = []
        self.streamed = 0  # answers sent as server-sent events (`stream: true`)
        self._lock = threading.Lock()
        self.server = _Server(("127.0.0.1", 0), self._handler_class())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def fail_next(self, count: int, status: int, message: str = "simulated failure") -> None:
        with self._lock:
            self.failures.extend([(status, message)] * count)

    def delay_next(self, seconds: float) -> None:
        """The next call answers only after `seconds` (a slow provider)."""
        with self._lock:
            self.delays.append(seconds)

    def _next_delay(self) -> float:
        with self._lock:
            return self.delays.pop(0) if self.delays else 0.0

    def _next_failure(self) -> tuple[int, str] | None:
        with self._lock:
            return self.failures.pop(0) if self.failures else None

    def answer(self, body: dict[str, Any]) -> str:
        messages = body.get("messages", [])
        last_user = next((m for m in reversed(messages) if m.get("role") == "user"), {})
        content = last_user.get("content", "")
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content)
        _, _, tail = content.partition("Respond with")
        if "JSON object" in tail:
            names = JSON_FIELDS.findall(tail)
            return json.dumps({name: self.answers.get(name, f"fake {name}") for name in names})
        names = [n for n in FIELD.findall(tail) if n != "completed"]
        sections = [f"[[ ## {n} ## ]]\n{self.answers.get(n, f'fake {n}')}" for n in names]
        return "\n\n".join([*sections, "[[ ## completed ## ]]"])

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                with fake._lock:
                    headers = {key.lower(): value for key, value in self.headers.items()}
                    fake.requests.append({"path": self.path, "headers": headers, "body": body})
                if not self.path.endswith("/chat/completions"):
                    self._send(404, {"error": {"message": "not found", "type": "not_found"}})
                    return
                delay = fake._next_delay()
                if delay:
                    time.sleep(delay)  # a slow provider, in this handler's own thread
                failure = fake._next_failure()
                if failure is not None:
                    status, message = failure
                    self._send(status, {"error": {"message": message, "type": "server_error",
                                                  "code": str(status)}},
                               {"Retry-After": "0"} if status == 429 else None)
                    return
                text = fake.answer(body)
                prompt_tokens = sum(len(str(m.get("content", "")).split())
                                    for m in body.get("messages", []))
                completion_tokens = len(text.split())
                usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                         "total_tokens": prompt_tokens + completion_tokens}
                if body.get("stream"):
                    self._stream(text, body, usage)
                    return
                self._send(200, {
                    "id": f"chatcmpl-{len(fake.requests)}",
                    "object": "chat.completion",
                    "created": 1700000000,
                    "model": body.get("model", "fake"),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": prompt_tokens,
                              "completion_tokens": completion_tokens,
                              "total_tokens": prompt_tokens + completion_tokens},
                })

            def _stream(self, text: str, body: dict[str, Any], usage: dict[str, int]) -> None:
                """The answer as server-sent events, a few words per chunk (OpenAI's
                streaming format), ending with `[DONE]`."""
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                words = re.findall(r"\S+\s*|\s+", text)
                pieces = ["".join(words[i:i + 3]) for i in range(0, len(words), 3)]
                base = {"id": f"chatcmpl-{len(fake.requests)}", "object": "chat.completion.chunk",
                        "created": 1700000000, "model": body.get("model", "fake")}
                for index, piece in enumerate(pieces):
                    delta = {"content": piece, **({"role": "assistant"} if index == 0 else {})}
                    self._event({**base, "choices": [{"index": 0, "delta": delta,
                                                      "finish_reason": None}]})
                self._event({**base, "choices": [{"index": 0, "delta": {},
                                                  "finish_reason": "stop"}], "usage": usage})
                self.wfile.write(b"data: [DONE]\n\n")
                with fake._lock:
                    fake.streamed += 1

            def _event(self, payload: dict[str, Any]) -> None:
                self.wfile.write(b"data: " + json.dumps(payload).encode() + b"\n\n")
                self.wfile.flush()

            def _send(self, status: int, payload: dict[str, Any],
                      headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def start(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@contextmanager
def fake_openai() -> Iterator[FakeOpenAI]:
    server = FakeOpenAI().start()
    try:
        yield server
    finally:
        server.stop()
