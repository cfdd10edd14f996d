"""Shared fixtures: a real worker process over real pipes, and a small client for it."""

from __future__ import annotations

import itertools
import os
import select
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

REPO = Path(__file__).resolve().parent.parent
DEFAULT_TIMEOUT_S = 30.0


class WorkerProcess:
    """A spawned `python -m bridge` speaking the real protocol over its stdin/stdout.

    Responses are matched by id; events are collected in arrival order. Stderr is
    captured in full so tests can inspect the log lines.
    """

    def __init__(self, *flags: str, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bridge", *flags],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
        )
        assert self.process.stdin and self.process.stdout and self.process.stderr
        self._stdout = self.process.stdout
        self._buffer = bytearray()
        self._ids = itertools.count(1)
        self.responses: dict[Any, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self._stderr_chunks: list[bytes] = []
        self._stderr_thread = threading.Thread(target=self._drain_stderr, daemon=True)
        self._stderr_thread.start()
        self.ready = self.next_event("ready")

    @property
    def pid(self) -> int:
        return self.process.pid

    def _drain_stderr(self) -> None:
        assert self.process.stderr
        for chunk in iter(lambda: self.process.stderr.read1(65536), b""):  # type: ignore[union-attr]
            self._stderr_chunks.append(chunk)

    def stderr_text(self) -> str:
        return b"".join(self._stderr_chunks).decode("utf-8", "replace")

    # ----- writing -----

    def send_raw(self, data: bytes) -> None:
        assert self.process.stdin
        self.process.stdin.write(data)
        self.process.stdin.flush()

    def send_frame(self, payload: bytes) -> None:
        self.send_raw(struct.pack(">I", len(payload)) + payload)

    def send(self, message: Any) -> None:
        self.send_frame(msgpack.packb(message, use_bin_type=True))

    def new_id(self) -> int:
        return next(self._ids)

    def start(self, command: str, args: dict[str, Any] | None = None, **envelope: Any) -> Any:
        """Send a request without waiting; returns its id."""
        request_id = envelope.pop("id", None)
        if request_id is None:
            request_id = self.new_id()
        message: dict[str, Any] = {"id": request_id, "command": command, **envelope}
        if args is not None:
            message["args"] = args
        self.send(message)
        return request_id

    def request(
        self,
        command: str,
        args: dict[str, Any] | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        **envelope: Any,
    ) -> dict[str, Any]:
        return self.response(self.start(command, args, **envelope), timeout)

    def call(self, command: str, args: dict[str, Any] | None = None, **envelope: Any) -> Any:
        """A request that must succeed; returns its result."""
        response = self.request(command, args, **envelope)
        assert response["success"], response
        return response["result"]

    # ----- reading -----

    def read_message(self, timeout: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
        """The next frame the worker sends, decoded; fails the test after `timeout`."""
        while True:
            if len(self._buffer) >= 4:
                (length,) = struct.unpack_from(">I", self._buffer)
                if len(self._buffer) >= 4 + length:
                    payload = bytes(self._buffer[4 : 4 + length])
                    del self._buffer[: 4 + length]
                    message = msgpack.unpackb(payload, raw=False, strict_map_key=False)
                    if "event" in message and "id" not in message:
                        self.events.append(message)
                    else:
                        self.responses[message["id"]] = message
                    return message  # type: ignore[no-any-return]
            ready, _, _ = select.select([self._stdout], [], [], timeout)
            if not ready:
                raise TimeoutError(f"no frame from the worker within {timeout} s")
            chunk = os.read(self._stdout.fileno(), 65536)
            if not chunk:
                raise EOFError("the worker closed its stdout")
            self._buffer += chunk

    def response(self, request_id: Any, timeout: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
        while request_id not in self.responses:
            self.read_message(timeout)
        return self.responses.pop(request_id)

    def next_event(self, name: str, timeout: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
        while True:
            for index, message in enumerate(self.events):
                if message["event"] == name:
                    return self.events.pop(index)
            self.read_message(timeout)

    # ----- ending -----

    def wait_exit(self, timeout: float = 10.0) -> int:
        return self.process.wait(timeout)

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin
            try:
                self.process.stdin.close()
                self.process.wait(5)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.process.send_signal(signal.SIGKILL)
                self.process.wait(5)
        self._stderr_thread.join(5)


@pytest.fixture
def worker() -> Iterator[WorkerProcess]:
    """A fresh worker with the test-only commands enabled."""
    process = WorkerProcess("--enable-test-commands")
    yield process
    process.close()


@pytest.fixture
def spawn() -> Iterator[Any]:
    """Spawn workers with any flags; all are closed at the end of the test."""
    spawned: list[WorkerProcess] = []

    def start(*flags: str, env: dict[str, str] | None = None) -> WorkerProcess:
        process = WorkerProcess(*flags, env=env)
        spawned.append(process)
        return process

    yield start
    for process in spawned:
        process.close()
