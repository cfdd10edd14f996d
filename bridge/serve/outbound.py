"""Everything the worker sends: replies and events (framed and held to the protocol's
limits by the `Connection`), shown to the observers, handed to the writer; and each
request's one log line."""

from __future__ import annotations

import time
from typing import Any, Protocol

from dspy_bridge.domain.stats import Stats
from dspy_bridge.io.logs import RequestLines
from dspy_bridge.io.pipes import HostPipes
from dspy_bridge.protocol.connection import Connection, Unsendable
from dspy_bridge.protocol.envelope import error_response, event
from dspy_bridge.protocol.errors import BridgeError

RequestId = int | str | None


class FrameObserver(Protocol):
    """Sees every request frame in and every message out (used by --record)."""

    def incoming(self, message: dict[str, Any]) -> None: ...

    def outgoing(self, message: dict[str, Any]) -> None: ...


class Outbound:
    def __init__(
        self,
        connection: Connection,
        pipes: HostPipes,
        observers: list[FrameObserver],
        stats: Stats,
        log: Any,
        lines: RequestLines,
    ) -> None:
        self._connection = connection
        self._pipes = pipes
        self._observers = observers
        self._stats = stats
        self._log = log
        self._lines = lines
        self._unwritten_lines: list[str] = []  # request lines waiting for their replies' flush

    def emit_event(self, name: str, **fields: Any) -> bool:
        """Send an event; False (and a log line) when it cannot go out as it is."""
        message = event(name, **fields)
        try:
            frame = self._connection.send_event(message)
        except Unsendable as problem:
            self._log.error("event_not_sent", event=name, problem=problem.sentence)
            return False
        self.observe("outgoing", message)
        self._pipes.send(frame)
        return True

    def reply(self, message: dict[str, Any]) -> None:
        """Send a request's (or a refused frame's) one response: the Connection replaces
        one that cannot go out as it is with an error under the same id."""
        sent = self._connection.send_response(message)
        self.observe("outgoing", sent.message)
        self._pipes.send(sent.frame)

    @property
    def observing(self) -> bool:
        """Whether anyone watches the frames (--record): else nothing need be built."""
        return bool(self._observers)

    def observe(self, direction: str, message: dict[str, Any]) -> None:
        """Show a message to the observers; one that raises never costs a reply."""
        for observer in self._observers:
            try:
                getattr(observer, direction)(message)
            except Exception as exc:  # noqa: BLE001 - an observer's bug is logged, not fatal
                self._stats.observer_failures += 1
                self._log.error(
                    "observer_failed", observer=type(observer).__name__, error=repr(exc)[:500]
                )

    def refuse(
        self, request_id: RequestId, command: str, error: BridgeError, received: float
    ) -> None:
        """Refuse a frame or request before any command ran for it."""
        self._stats.record_rejected(error.type.value)
        self.reply(error_response(request_id, error))
        self.log_request(
            request_id, command, (time.perf_counter() - received) * 1000, error.type.value,
            message=error.message,
        )

    def log_request(
        self, request_id: RequestId, command: str, duration_ms: float, outcome: str, *,
        session_id: str | None = None, message: str | None = None,
    ) -> None:
        """The one log line of each request, written after its reply went out (the lines
        of one flush in one write); a logging failure is counted, never allowed to cost
        the reply."""
        if not self._lines.enabled:
            return
        try:
            line = self._lines.render(
                request_id, command, duration_ms, outcome, session_id=session_id,
                message=message,
            )
        except Exception:  # noqa: BLE001 - see the docstring
            self._stats.log_failures += 1
            return
        self._unwritten_lines.append(line)
        if len(self._unwritten_lines) == 1:
            self._pipes.after_flush(self._write_lines)

    def _write_lines(self) -> None:
        lines, self._unwritten_lines = self._unwritten_lines, []
        try:
            self._lines.write(lines)
        except Exception:  # noqa: BLE001 - see log_request
            self._stats.log_failures += len(lines)
