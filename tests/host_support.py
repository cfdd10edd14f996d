"""The host's side of callbacks for tests on a `WorkerProcess`: a test's Python
functions answer the worker's `callback` events while the test waits for a response."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.conftest import WorkerProcess


class HostError(Exception):
    """Raised by a test's host function: answered as a callback `error`."""

    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class Host:
    """The host's side of callbacks for a test: runs each `callback` event's function
    (from `functions`) and answers it, until the awaited response comes."""

    def __init__(self, worker: WorkerProcess,
                 functions: dict[str, Callable[[Any], Any]] | None = None) -> None:
        self.worker = worker
        self.functions = functions or {}
        self.callbacks: list[dict[str, Any]] = []
        self.abandoned: list[dict[str, Any]] = []
        self.order: list[str] = []  # "callback:<id>", "abandoned:<id>", "response:<id>"

    def pump(self, timeout: float = 60.0) -> dict[str, Any]:
        """Read one frame, answering it if it is a callback; returns it."""
        message = self.worker.read_message(timeout)
        if message.get("event") == "callback":
            self.worker.events.remove(message)
            self.callbacks.append(message)
            self.order.append(f"callback:{message['callback_id']}")
            function = self.functions.get(message["function"])
            if function is not None:
                self.answer(message, function)
        elif message.get("event") == "callback_abandoned":
            self.worker.events.remove(message)
            self.abandoned.append(message)
            self.order.append(f"abandoned:{message['callback_id']}")
        elif "id" in message:
            self.order.append(f"response:{message['id']}")
        return message

    def answer(self, callback: dict[str, Any], function: Callable[[Any], Any]) -> None:
        try:
            reply: dict[str, Any] = {"result": function(callback["args"])}
        except HostError as exc:
            reply = {"error": {"message": str(exc), "retryable": exc.retryable}}
        self.worker.start("callback_reply", {"callback_id": callback["callback_id"], **reply})

    def until(self, request_id: Any, timeout: float = 60.0) -> dict[str, Any]:
        while request_id not in self.worker.responses:
            self.pump(timeout)
        return self.worker.responses.pop(request_id)

    def run(self, command: str, args: dict[str, Any], **envelope: Any) -> dict[str, Any]:
        return self.until(self.worker.start(command, args, **envelope))
