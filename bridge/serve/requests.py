"""The requests a worker admitted and has not answered yet, by wire id (a control command
is answered as it is read: it is never in flight)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass

from dspy_bridge.protocol.errors import BridgeError

RequestId = int | str


@dataclass(slots=True)
class InFlight:
    command: str
    started: float
    frame_bytes: int = 0
    task: asyncio.Task[None] | None = None
    # Set when the worker stops the task on purpose; it then answers with this error.
    abandon_error: BridgeError | None = None
    # Whether its task has begun: one cancelled before that would end without running a
    # line, so without its answer (a control command read in the same turn can stop it).
    began: bool = False


class InFlightTable:
    """Admitted requests by id, and the bytes of their frames (kept as requests come and
    go: the in-flight limits read them on every request)."""

    def __init__(self) -> None:
        self._entries: dict[RequestId, InFlight] = {}
        self.work_bytes = 0

    def __contains__(self, request_id: RequestId) -> bool:
        return request_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, request_id: RequestId, entry: InFlight) -> None:
        self._entries[request_id] = entry
        self.work_bytes += entry.frame_bytes

    def remove(self, request_id: RequestId) -> None:
        self.work_bytes -= self._entries.pop(request_id).frame_bytes

    def tasks(self) -> list[asyncio.Task[None]]:
        return [entry.task for entry in self._entries.values() if entry.task is not None]

    def work_tasks(self) -> set[asyncio.Task[None]]:
        """The running tasks: what a graceful shutdown waits for."""
        return {
            entry.task
            for entry in self._entries.values()
            if entry.task is not None and not entry.task.done()
        }

    def stop(self, request_id: RequestId, error: BridgeError) -> bool:
        """Cancel a running request so that it answers `error`; False if there is none
        (unknown, finished, or already being stopped)."""
        entry = self._entries.get(request_id)
        if entry is None or entry.task is None or entry.task.done() or entry.abandon_error:
            return False
        entry.abandon_error = error
        if entry.began:
            entry.task.cancel()
        return True  # else it answers `error` as it begins

    def ids_of(self, tasks: set[asyncio.Task[None]]) -> Iterator[RequestId]:
        return (rid for rid, entry in self._entries.items() if entry.task in tasks)

    def cancel_all(self) -> None:
        """Cancel every task without an answer: nobody is left to hear one."""
        for task in self.tasks():
            task.cancel()
