"""A session's recent LM calls (`get_history`): DSPy's `inspect_history` for a remote
host, bounded in count and bytes, its text already scrubbed of the LM's secrets."""

from __future__ import annotations

from collections import deque
from typing import Any

from dspy_bridge.protocol import codec

MAX_ENTRIES = 100
MAX_BYTES = 1024 * 1024  # per session


class CallHistory:
    """The last calls, oldest first; the oldest go when either bound is passed."""

    def __init__(self, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES) -> None:
        self._entries: deque[tuple[dict[str, Any], int]] = deque()
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self.bytes = 0
        self.recorded = 0

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, entry: dict[str, Any]) -> None:
        size = len(codec.pack(entry))
        if size > self._max_bytes:
            return  # cannot be kept whole (the engine cuts text long before this)
        self._entries.append((entry, size))
        self.bytes += size
        self.recorded += 1
        while len(self._entries) > self._max_entries or self.bytes > self._max_bytes:
            self.bytes -= self._entries.popleft()[1]

    def last(self, count: int) -> list[dict[str, Any]]:
        return [entry for entry, _ in list(self._entries)[-count:]]

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0
