"""Length-prefixed framing: a 4-byte unsigned big-endian length, then that many bytes.

Identical to Erlang's `{packet, 4}`. The decoder is sans-I/O: feed it whatever bytes
arrived and it hands back complete frames. A frame longer than the limit is never
buffered: its bytes are skipped as they arrive and it is reported once.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from dspy_bridge.protocol.record import record

HEADER = struct.Struct(">I")
HEADER_SIZE = HEADER.size
MAX_LENGTH = 2**32 - 1
DEFAULT_MAX_FRAME_BYTES = 64 * 1024 * 1024


@record
class Frame:
    payload: bytes


@dataclass(frozen=True, slots=True)
class OversizedFrame:
    """A frame whose declared length exceeded the limit; its bytes were discarded."""

    length: int


def encode_frame(payload: bytes) -> bytes:
    if len(payload) > MAX_LENGTH:
        raise ValueError(f"payload of {len(payload)} bytes does not fit a 4-byte length")
    return HEADER.pack(len(payload)) + payload


class FrameDecoder:
    def __init__(self, max_frame_bytes: int) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()
        self._skip_remaining = 0

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame (a non-zero value at EOF means truncation)."""
        return len(self._buffer) + self._skip_remaining

    def feed(self, data: bytes) -> list[Frame | OversizedFrame]:
        view = memoryview(data)
        if self._skip_remaining:
            skipped = min(self._skip_remaining, len(view))
            self._skip_remaining -= skipped
            view = view[skipped:]
        self._buffer += view
        out: list[Frame | OversizedFrame] = []
        while len(self._buffer) >= HEADER_SIZE:
            (length,) = HEADER.unpack_from(self._buffer)
            if length > self.max_frame_bytes:
                available = len(self._buffer) - HEADER_SIZE
                del self._buffer[: HEADER_SIZE + min(length, available)]
                self._skip_remaining = max(0, length - available)
                out.append(OversizedFrame(length))
                continue
            end = HEADER_SIZE + length
            if len(self._buffer) < end:
                break
            out.append(Frame(bytes(self._buffer[HEADER_SIZE:end])))
            del self._buffer[:end]
        return out
