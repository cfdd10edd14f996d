"""Backpressure: the bytes of replies written but not yet taken by the host, bounded.

The loop takes bytes when it queues a frame, they are released as the host reads them
(by the loop's own writes, or the writer thread's), and reading requests pauses while
the total is over the budget: a host that reads replies slowly slows its own requests
instead of growing the worker's memory. A reply is never refused; only new requests wait.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class OutboxBudget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.pending = 0
        self.peak = 0
        self.pauses = 0
        self._closed = False
        self._changed = threading.Condition()
        self._resume: Callable[[], None] | None = None

    def take(self, size: int) -> None:
        with self._changed:
            self.pending += size
            self.peak = max(self.peak, self.pending)

    def release(self, size: int) -> None:
        resume = None
        with self._changed:
            self.pending -= size
            if self.pending <= self.limit:
                self._changed.notify_all()
                resume, self._resume = self._resume, None
        if resume is not None:
            resume()

    def pause_while_over(self, resume: Callable[[], None]) -> bool:
        """For a reader that must not block: True (a pause, counted) when over the budget,
        and `resume` is called, from the thread that releases, once back within it."""
        with self._changed:
            if self.pending <= self.limit or self._closed:
                return False
            self.pauses += 1
            self._resume = resume
            return True

    def wait_for_room(self) -> bool:
        """Block while over the budget; False once closed (the worker stops reading)."""
        with self._changed:
            if self.pending > self.limit and not self._closed:
                self.pauses += 1
                self._changed.wait_for(lambda: self.pending <= self.limit or self._closed)
            return not self._closed

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()
