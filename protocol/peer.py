"""What both sides of the conversation share, sans-I/O: reading frames (framing, then
msgpack with limits), counting the responses owed per id, and the rules' errors.

`connection.Connection` is the worker's side and `host.HostConnection` the host's; like
h11's `Connection`, each owns the rules of the conversation, not just its encoding: ids
are unique while in flight, and every request is answered exactly once.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from dspy_bridge.protocol import codec, envelope
from dspy_bridge.protocol.errors import BridgeError, ErrorType, field_errors
from dspy_bridge.protocol.framing import (
    DEFAULT_MAX_FRAME_BYTES,
    Frame,
    FrameDecoder,
    OversizedFrame,
    encode_frame,
)
from dspy_bridge.protocol.record import record

# The id a response goes under: a request's own (an int >= 0 or a str), or nil for a
# frame whose id could not be known.
AnswerId = int | str | None


class LocalProtocolError(Exception):
    """This side was asked to send something the protocol forbids (a second response to
    a request, a request reusing an id in flight, a malformed message). Nothing was
    sent and nothing was counted: it is a bug of the caller, not of the peer."""


def id_in_flight_error(request_id: int | str) -> BridgeError:
    """The answer to a request that reuses an id still owed a response (the one wire
    form for this refusal, whoever detects it)."""
    return BridgeError(
        ErrorType.INVALID_REQUEST,
        f"request id {request_id!r} is already in flight",
        details=field_errors([("id", "already in flight")]),
    )


@record
class Read:
    """One frame off the wire: its decoded value, or the invalid_frame error it earned.

    `payload` is None for an oversized frame (its bytes were skipped unread). After a
    `codec.TooDeep` error `value` still holds the decoded value, whose id is answerable.
    """

    payload: bytes | None
    value: Any = None
    error: BridgeError | None = None

    @property
    def answer_id(self) -> AnswerId:
        """The id a worker answers this frame under: its own when valid, else nil."""
        if self.error is None or isinstance(self.error, codec.TooDeep):
            return envelope.request_id_of(self.value)
        return None


class FrameReader:
    """Framing then msgpack, with both limits: the part of reading both roles share."""

    def __init__(self, max_frame_bytes: int, max_frame_items: int) -> None:
        self._decoder = FrameDecoder(max_frame_bytes)
        self.max_frame_items = max_frame_items

    @property
    def max_frame_bytes(self) -> int:
        return self._decoder.max_frame_bytes

    @max_frame_bytes.setter
    def max_frame_bytes(self, limit: int) -> None:
        self._decoder.max_frame_bytes = limit

    @property
    def buffered(self) -> int:
        return self._decoder.buffered

    def feed(self, data: bytes) -> list[Read]:
        return [self._read(item) for item in self._decoder.feed(data)]

    def _read(self, item: Frame | OversizedFrame) -> Read:
        if isinstance(item, OversizedFrame):
            return Read(
                None,
                error=BridgeError(
                    ErrorType.INVALID_FRAME,
                    f"frame of {item.length} bytes exceeds the limit of "
                    f"{self.max_frame_bytes} bytes; its bytes were skipped",
                    details={
                        "length": item.length,
                        "limit": "max_frame_bytes",
                        "max_frame_bytes": self.max_frame_bytes,
                    },
                ),
            )
        try:
            return Read(item.payload, codec.unpack(item.payload, self.max_frame_items))
        except codec.TooDeep as error:  # decoded, so its id can still be answered
            return Read(item.payload, error.value, error)
        except BridgeError as error:
            return Read(item.payload, error=error)


class OwedResponses:
    """How many responses are owed under each id: a multiset, not a set, because one id
    can be owed twice at once (a request reusing an id in flight is answered with an
    error under that same id, while the original is still to be answered).

    Each role reads in one thread and sends in another (the worker decodes in a reader
    thread and replies from the asyncio loop; a host reads in a thread while it sends),
    so every check-and-update runs under a lock: otherwise a check in one thread could
    interleave with an update in the other and lose or double a count."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[AnswerId] = Counter()

    def owe(self, answer_id: AnswerId) -> None:
        with self._lock:
            self._counts[answer_id] += 1

    def owe_first(self, answer_id: AnswerId) -> bool:
        """Owe one response under this id unless one already is; False if one was."""
        with self._lock:
            if self._counts.get(answer_id):
                return False
            self._counts[answer_id] = 1
            return True

    def settle(self, answer_id: AnswerId) -> bool:
        """One response owed under this id is given; False if none was owed."""
        with self._lock:
            if not self._counts.get(answer_id):
                return False
            self._counts[answer_id] -= 1
            if not self._counts[answer_id]:
                del self._counts[answer_id]
            return True

    def count(self, answer_id: AnswerId) -> int:
        with self._lock:
            return self._counts.get(answer_id, 0)

    def total(self) -> int:
        with self._lock:
            return self._counts.total()


def is_wire_id(value: Any) -> bool:
    """A valid request id, or nil: what a response's id may be. Checked before a dict
    lookup, where True would equal 1, 1.0 would too, and a list would not hash."""
    if value.__class__ is int:  # the common ids first, without request_id_of's map
        return bool(value >= 0)
    if value is None or value.__class__ is str:
        return True
    return envelope.request_id_of({"id": value}) is not None


def encode_message(message: Any) -> bytes:
    return encode_frame(codec.pack(message))


class Peer:
    """What both roles share: the reader (with the limits on what this side reads), the
    owed responses and their queries."""

    def __init__(
        self,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        max_frame_items: int = codec.DEFAULT_MAX_ITEMS,
    ) -> None:
        self._reader = FrameReader(max_frame_bytes, max_frame_items)
        self._owed = OwedResponses()

    @property
    def has_partial_frame(self) -> bool:
        """Bytes of an incomplete frame are held (at EOF: the peer's last frame was cut)."""
        return self._reader.buffered > 0

    def owed(self, answer_id: AnswerId) -> int:
        """How many responses are still owed under this id (by the worker to the host)."""
        return self._owed.count(answer_id)

    @property
    def owed_total(self) -> int:
        """How many responses are still owed, under all ids together."""
        return self._owed.total()
