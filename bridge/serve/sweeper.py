"""Idle-session eviction: a timer on the loop asks the store for sessions idle too long."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from dspy_bridge.domain.sessions import SessionStore


def sweep_interval(ttl_s: float) -> float:
    """Often enough that a session outlives its TTL by at most a quarter of it."""
    return min(max(ttl_s / 4, 0.02), 5.0)


class IdleSweeper:
    """Evicts idle sessions every `sweep_interval(ttl_s)` and announces each eviction."""

    def __init__(self, store: SessionStore, ttl_s: float, emit: Callable[..., object]) -> None:
        self._store = store
        self._ttl_s = ttl_s
        self._emit = emit

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.call_later(sweep_interval(self._ttl_s), self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        for session, idle in self._store.evict_idle(self._ttl_s, time.monotonic()):
            fields: dict[str, Any] = {
                "session_id": session.session_id,
                "reason": "idle",
                "idle_s": round(idle, 3),
                "programs": len(session.programs),
            }
            self._emit("session_evicted", **fields)
        self.start(loop)
