"""A minimal, independent host for the callback contract tests, written from PROTOCOL.md.

Frames are a 4-byte big-endian length and one msgpack value. A reader thread keeps every
frame the worker sends in arrival order (so tests can check what came before what), the
replies by id and the events in order. Nothing here reads the worker's implementation.
"""

from __future__ import annotations

import itertools
import os
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack

ROOT = Path(__file__).resolve().parents[2]  # /work/main
PYTHON = str(ROOT / ".venv" / "bin" / "python")
WAIT = 120.0  # generous: a loaded 2-core box

ERROR_TYPES = {
    "invalid_frame", "invalid_request", "unknown_command", "invalid_args", "not_found",
    "already_exists", "lm_not_configured", "lm_error", "timeout", "cancelled",
    "limit_exceeded", "shutting_down", "engine_unavailable", "host_error", "internal",
}

MISSING: Any = object()  # "leave this key out" (None is msgpack nil, a real value)


def _key(rid: Any) -> tuple[str, Any]:
    return (type(rid).__name__, rid)  # 1 and True are different ids


class Host:
    _ids = itertools.count(1)

    def __init__(self, *flags: str, env: dict[str, str] | None = None) -> None:
        full_env = dict(os.environ)
        for k in list(full_env):
            if k.endswith("_API_KEY"):
                full_env.pop(k, None)
        for k in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                  "all_proxy"):
            full_env[k] = "http://127.0.0.1:9"  # any accidental HTTP goes nowhere
        full_env["NO_PROXY"] = full_env["no_proxy"] = ""
        if env:
            full_env.update(env)
        self.flags = list(flags)
        self.proc = subprocess.Popen(
            [PYTHON, "-P", "-m", "dspy_bridge", *flags],
            cwd=str(ROOT), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env=full_env, bufsize=0,
        )
        self.cond = threading.Condition()
        self.frames: list[dict[str, Any]] = []
        self._seq: dict[int, int] = {}  # id(frame) -> arrival index
        self.replies: dict[tuple[str, Any], list[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self.violations: list[str] = []
        self.stderr_lines: list[bytes] = []
        self.sent: set[tuple[str, Any]] = set()
        self.accepted: set[str] = set()  # callback ids whose callback_reply was accepted
        self.eof = False
        self._wlock = threading.Lock()
        threading.Thread(target=self._read_loop, daemon=True).start()
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        self.ready = self.wait_event("ready", timeout=WAIT)

    # ------------------------------------------------------------------ reading
    def _read_exact(self, n: int) -> bytes | None:
        out = self.proc.stdout
        assert out is not None
        buf = bytearray()
        while len(buf) < n:
            chunk = out.read(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return bytes(buf)

    def _read_loop(self) -> None:
        try:
            while True:
                head = self._read_exact(4)
                if head is None:
                    return
                (n,) = struct.unpack(">I", head)
                payload = self._read_exact(n)
                if payload is None:
                    with self.cond:
                        self.violations.append(f"truncated frame of {n} bytes")
                    return
                self._accept(payload)
        finally:
            with self.cond:
                self.eof = True
                self.cond.notify_all()

    def _accept(self, payload: bytes) -> None:
        try:
            value = msgpack.unpackb(payload, raw=False, strict_map_key=False)
        except Exception as exc:  # noqa: BLE001 - an undecodable frame is the finding
            with self.cond:
                self.violations.append(f"undecodable frame: {exc}: {payload[:200]!r}")
                self.cond.notify_all()
            return
        with self.cond:
            if not isinstance(value, dict):
                self.violations.append(f"frame is not a map: {value!r:.200}")
                self.cond.notify_all()
                return
            self._seq[id(value)] = len(self.frames)
            self.frames.append(value)
            if "event" in value:
                if "id" in value:
                    self.violations.append(f"event with an id: {value!r:.300}")
                self.events.append(value)
            elif "id" in value:
                k = _key(value["id"]) if value["id"] is not None else ("nil", None)
                self.replies.setdefault(k, []).append(value)
                if k not in self.sent:
                    self.violations.append(f"reply to an id never sent: {value!r:.300}")
                self._check_reply(value)
            else:
                self.violations.append(f"frame neither event nor reply: {value!r:.300}")
            self.cond.notify_all()

    def _check_reply(self, r: dict[str, Any]) -> None:
        if r.get("success") is True:
            if "result" not in r:
                self.violations.append(f"success without result: {r!r:.300}")
        elif r.get("success") is False:
            e = r.get("error")
            if not (isinstance(e, dict) and isinstance(e.get("type"), str)
                    and isinstance(e.get("message"), str)
                    and isinstance(e.get("retryable"), bool)):
                self.violations.append(f"malformed error: {r!r:.300}")
            elif e["type"] not in ERROR_TYPES:
                self.violations.append(f"unknown error type: {r!r:.300}")
        else:
            self.violations.append(f"reply without boolean success: {r!r:.300}")

    def _drain_stderr(self) -> None:
        err = self.proc.stderr
        assert err is not None
        try:
            for line in iter(err.readline, b""):
                with self.cond:
                    self.stderr_lines.append(line)
        except (OSError, ValueError):
            return

    def stderr_tail(self, n: int = 10) -> str:
        with self.cond:
            lines = self.stderr_lines[-n:]
        return "".join(x[:400].decode("utf-8", "replace") for x in lines)

    # ------------------------------------------------------------------ writing
    def send(self, msg: dict[str, Any]) -> None:
        if "id" in msg:
            with self.cond:
                self.sent.add(_key(msg["id"]))
        payload = msgpack.packb(msg, use_bin_type=True)
        stdin = self.proc.stdin
        assert stdin is not None
        with self._wlock:
            stdin.write(struct.pack(">I", len(payload)) + payload)
            stdin.flush()

    def new_id(self, prefix: str = "cbt") -> str:
        return f"{prefix}-{next(self._ids)}"

    def start(self, command: str, args: Any = MISSING, *, id: Any = None,
              timeout_ms: int | None = None) -> Any:
        rid = self.new_id() if id is None else id
        msg: dict[str, Any] = {"id": rid, "command": command}
        if args is not MISSING:
            msg["args"] = args
        if timeout_ms is not None:
            msg["timeout_ms"] = timeout_ms
        self.send(msg)
        return rid

    def request(self, command: str, args: Any = MISSING, *, timeout: float = WAIT,
                **kw: Any) -> dict[str, Any]:
        return self.reply(self.start(command, args, **kw), timeout=timeout)

    def ok(self, command: str, args: Any = MISSING, **kw: Any) -> Any:
        r = self.request(command, args, **kw)
        assert r.get("success") is True, f"{command} {args!r:.400} failed: {r!r:.800}"
        return r["result"]

    def err(self, command: str, args: Any = MISSING, **kw: Any) -> dict[str, Any]:
        r = self.request(command, args, **kw)
        assert r.get("success") is False, f"{command} {args!r:.400} succeeded: {r!r:.800}"
        return r["error"]

    def callback_reply(self, callback_id: Any, result: Any = MISSING, error: Any = MISSING,
                       **extra: Any) -> dict[str, Any]:
        """Send callback_reply; return the whole response. Tracks accepted answers."""
        args: dict[str, Any] = {"callback_id": callback_id, **extra}
        if result is not MISSING:
            args["result"] = result
        if error is not MISSING:
            args["error"] = error
        r = self.request("callback_reply", args)
        if r.get("success") is True and isinstance(r.get("result"), dict) \
                and r["result"].get("accepted") is True:
            with self.cond:
                self.accepted.add(callback_id)
        return r

    def answer(self, callback_id: str, result: Any = MISSING,
               error: Any = MISSING) -> None:
        """A reply that must be accepted."""
        r = self.callback_reply(callback_id, result=result, error=error)
        assert r.get("success") is True and r["result"] == {"accepted": True}, r

    # ------------------------------------------------------------------ waiting
    def _wait(self, pred: Callable[[], Any], what: str, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                v = pred()
                if v is not None:
                    return v
                if self.eof:
                    raise AssertionError(f"worker closed stdout waiting for {what}; exit="
                                         f"{self.proc.poll()}; stderr:\n{self.stderr_tail()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {what} within {timeout}s; stderr:\n"
                                         f"{self.stderr_tail()}")
                self.cond.wait(min(left, 1.0))

    def reply(self, rid: Any, timeout: float = WAIT) -> dict[str, Any]:
        k = _key(rid)
        return self._wait(lambda: (self.replies.get(k) or [None])[0], f"reply to {rid!r}",
                          timeout)

    def has_reply(self, rid: Any) -> bool:
        with self.cond:
            return bool(self.replies.get(_key(rid)))

    def reply_count(self, rid: Any) -> int:
        with self.cond:
            return len(self.replies.get(_key(rid), []))

    def wait_event(self, name: str, where: Callable[[dict[str, Any]], bool] | None = None,
                   timeout: float = WAIT) -> dict[str, Any]:
        def pred() -> Any:
            for e in self.events:
                if e.get("event") == name and (where is None or where(e)):
                    return e
            return None
        return self._wait(pred, f"event {name!r}", timeout)

    def callbacks(self, rid: Any) -> list[dict[str, Any]]:
        with self.cond:
            return [e for e in self.events if e.get("event") == "callback"
                    and _same(e.get("request_id"), rid)]

    def all_callbacks(self) -> list[dict[str, Any]]:
        with self.cond:
            return [e for e in self.events if e.get("event") == "callback"]

    def abandoned(self, callback_id: str | None = None,
                  rid: Any = MISSING) -> list[dict[str, Any]]:
        with self.cond:
            return [e for e in self.events if e.get("event") == "callback_abandoned"
                    and (callback_id is None or e.get("callback_id") == callback_id)
                    and (rid is MISSING or _same(e.get("request_id"), rid))]

    def wait_callback(self, rid: Any, n: int = 1, timeout: float = WAIT) -> dict[str, Any]:
        """The n-th callback event of request rid (1-based)."""
        def pred() -> Any:
            cbs = [e for e in self.events if e.get("event") == "callback"
                   and _same(e.get("request_id"), rid)]
            if len(cbs) >= n:
                return cbs[n - 1]
            if self.replies.get(_key(rid)):
                raise AssertionError(f"request {rid!r} answered before callback #{n}: "
                                     f"{self.replies[_key(rid)][0]!r:.800}")
            return None
        return self._wait(pred, f"callback #{n} of request {rid!r}", timeout)

    def wait_abandoned(self, callback_id: str, timeout: float = WAIT) -> dict[str, Any]:
        return self.wait_event("callback_abandoned",
                               lambda e: e.get("callback_id") == callback_id, timeout)

    def seq(self, frame: dict[str, Any]) -> int:
        with self.cond:
            return self._seq[id(frame)]

    def serve(self, rid: Any, answer: Callable[[dict[str, Any]], Any],
              timeout: float = WAIT) -> dict[str, Any]:
        """Answer every callback of request rid as it comes, until rid is answered.

        `answer(cb)` returns ("result", v), ("error", e) or None (leave it unanswered).
        Returns the response."""
        seen: set[str] = set()
        deadline = time.monotonic() + timeout

        def pred() -> Any:
            if self.replies.get(_key(rid)):
                return ("done", None)
            for e in self.events:
                if e.get("event") == "callback" and _same(e.get("request_id"), rid) \
                        and e.get("callback_id") not in seen:
                    return ("cb", e)
            return None

        while True:
            kind, cb = self._wait(pred, f"reply or callback of {rid!r}",
                                  max(0.1, deadline - time.monotonic()))
            if kind == "done":
                return self.reply(rid)
            seen.add(cb["callback_id"])
            a = answer(cb)
            if a is None:
                continue
            how, value = a
            if how == "result":
                self.callback_reply(cb["callback_id"], result=value)
            else:
                self.callback_reply(cb["callback_id"], error=value)

    # ------------------------------------------------------------------ checks
    def assert_clean(self) -> None:
        with self.cond:
            problems = list(self.violations)
            for k, rs in self.replies.items():
                if k != ("nil", None) and len(rs) > 1:
                    problems.append(f"{len(rs)} replies to id {k[1]!r}")
        assert not problems, "protocol violations:\n" + "\n".join(problems[:10])

    def check_callback_order(self, rid: Any) -> None:
        """The request's callback events and the callback_abandoned events of its
        callbacks all come before its response; a callback outstanding when the request
        answered was abandoned; an accepted callback is never abandoned; one abandonment
        at most per callback."""
        resp = self.reply(rid)
        rseq = self.seq(resp)
        cbs = self.callbacks(rid)
        ids = [c["callback_id"] for c in cbs]
        assert len(set(ids)) == len(ids), f"callback ids repeated: {ids}"
        for c in cbs:
            assert self.seq(c) < rseq, f"callback after the response of {rid!r}: {c}"
        for c in cbs:
            ab = self.abandoned(c["callback_id"])
            assert len(ab) <= 1, f"abandoned more than once: {ab}"
            for a in ab:
                assert self.seq(a) > self.seq(c), f"abandoned before it was issued: {a}"
                assert self.seq(a) < rseq, (
                    f"callback_abandoned after the response of {rid!r}: {a}")
                assert _same(a.get("request_id"), rid), a
                assert c["callback_id"] not in self.accepted, (
                    f"an accepted callback was abandoned: {a}")
            if not ab:
                assert c["callback_id"] in self.accepted, (
                    f"callback {c['callback_id']} was neither answered nor abandoned before "
                    f"the response of {rid!r}")

    # ------------------------------------------------------------------ ending
    def stop(self) -> None:
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for s in (self.proc.stdout, self.proc.stderr):
            try:
                if s is not None:
                    s.close()
            except OSError:
                pass


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


# -------------------------------------------------------------------------- helpers
def field_names(error: dict[str, Any]) -> list[str]:
    errs = (error.get("details") or {}).get("errors") or []
    return [e.get("field") for e in errs if isinstance(e, dict)]


def names_field(error: dict[str, Any], field: str) -> bool:
    """details.errors names `field` (or something inside it)."""
    return any(isinstance(f, str) and (f == field or f.startswith(field + "."))
               for f in field_names(error))


def step(thought: str, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    """One mock answer for a ReAct step."""
    return {"next_thought": thought, "next_tool_name": tool, "next_tool_args": args}


def final(answer: Any, reasoning: str = "All gathered.") -> dict[str, Any]:
    """The mock answer for ReAct's final extraction (reasoning + the signature outputs)."""
    return {"reasoning": reasoning, "answer": answer}


def mock_lm(session: str, sequence: list[Any] | None = None, model: str = "mock",
            **extra: Any) -> dict[str, Any]:
    cfg_extra: dict[str, Any] = dict(extra)
    if sequence is not None:
        cfg_extra["sequence"] = sequence
    return {"session_id": session, "model": model, "cache": False, "num_retries": 0,
            "extra": cfg_extra}
