"""Shared fixtures: a real worker process over real pipes, and a small client for it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dspy_bridge.tools.client import WorkerClient

REPO = Path(__file__).resolve().parent.parent
DEFAULT_TIMEOUT_S = 30.0


class WorkerProcess:
    """A spawned `python -P -m dspy_bridge` (a `WorkerClient`), with conveniences for tests.

    Responses are kept by id and events in arrival order as they are read; the worker's
    stderr is kept in full so tests can inspect the log lines.
    """

    def __init__(self, *flags: str, env: dict[str, str] | None = None) -> None:
        self.client = WorkerClient(
            flags, cwd=REPO, env={**os.environ, **(env or {})}, stderr_lines=None
        )
        self.process = self.client.process
        self.responses: dict[Any, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.ready = self.next_event("ready")

    @property
    def pid(self) -> int:
        return self.client.pid

    def stderr_text(self) -> str:
        return self.client.stderr_text()

    # ----- writing -----

    def send_raw(self, data: bytes) -> None:
        self.client.send_bytes(data)

    def send_frame(self, payload: bytes) -> None:
        self.client.send_payload(payload)

    def send(self, message: Any) -> None:
        self.client.send(message)

    def new_id(self) -> int:
        return self.client.new_id()

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
        message = self.client.receive(timeout)
        if message is None:
            raise TimeoutError(f"no frame from the worker within {timeout} s")
        if "event" in message and "id" not in message:
            self.events.append(message)
        else:
            self.responses[message["id"]] = message
        return message

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
        self.client.close()


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
