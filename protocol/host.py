"""The host's side of the conversation, sans-I/O: requests become bytes (refusing an id
still in flight), and bytes from the worker become typed responses and events — or
`Unexpected` responses no request waits for, returned rather than raised, since a test
host sends raw and invalid frames on purpose. The worker's side is `connection`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from dspy_bridge.protocol import codec, envelope
from dspy_bridge.protocol.errors import BridgeError, ErrorType
from dspy_bridge.protocol.framing import (
    DEFAULT_MAX_FRAME_BYTES,
)
from dspy_bridge.protocol.peer import (
    AnswerId,
    FrameReader,
    LocalProtocolError,
    Peer,
    Read,
    encode_message,
    is_wire_id,
)


@dataclass(frozen=True, slots=True)
class Response:
    """The response a request was owed: `result` when `ok`, else the wire `error` map."""

    id: AnswerId
    ok: bool
    result: Any
    error: dict[str, Any] | None
    message: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Event:
    name: str
    message: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Unexpected:
    """A map the protocol does not allow here: a response no request is waiting for (an
    unknown id, nil with no unreadable frame sent, an id answered already), or neither a
    well-formed response nor an event. Returned rather than raised: a test host provokes
    these on purpose, and a real host decides for itself whether the worker is broken."""

    message: dict[str, Any]
    reason: str


@dataclass(frozen=True, slots=True)
class InvalidFrame:
    """A frame the host could not read as a map: over its limits or not msgpack (error
    type invalid_frame). `payload` is None when its bytes were skipped unread. Returned,
    so the stream goes on; whatever response it carried stays owed."""

    error: BridgeError
    payload: bytes | None


HostItem = Response | Event | Unexpected | InvalidFrame


class HostConnection(Peer):
    """Host side: requests become bytes (an id in flight is refused), and bytes from the
    worker become `Response`, `Event`, `Unexpected` or `InvalidFrame` items.

    `send_unchecked` and `send_raw` send anything, for tests of the worker: to know which
    id the worker will answer such a frame under, the host reads what it sends the way
    the worker will (`worker_max_frame_bytes` / `worker_max_frame_items`: the worker's
    limits, updated from its `ready` event's `limits`). The `send_*` methods must be
    called from one thread at a time (their bytes are one stream); `receive_data` may
    run in another thread."""

    def __init__(
        self,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        max_frame_items: int = codec.DEFAULT_MAX_ITEMS,
        *,
        worker_max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        worker_max_frame_items: int = codec.DEFAULT_MAX_ITEMS,
    ) -> None:
        super().__init__(max_frame_bytes, max_frame_items)
        # What this host sends, read the way the worker will read it; locked, because
        # the receiving thread sets its limits from `ready` while a sender feeds it.
        self._sent = FrameReader(worker_max_frame_bytes, worker_max_frame_items)
        self._sent_lock = threading.Lock()

    def send_request(self, message: dict[str, Any]) -> bytes:
        """The frame of a request, now owed a response. Raises LocalProtocolError for a
        malformed request, an id already in flight, or bytes of a frame left unfinished
        by `send_raw` (this frame would complete it); codec.EncodeError if unpackable."""
        try:
            request = envelope.parse_request(message)
        except BridgeError as error:
            raise LocalProtocolError(error.message) from None
        if self._sent.buffered:
            raise LocalProtocolError("send_raw left a frame unfinished; this one would end it")
        frame = encode_message(message)
        if not self._owed.owe_first(request.id):
            raise LocalProtocolError(f"request id {request.id!r} is already in flight")
        return frame

    def send_unchecked(self, message: Any) -> bytes:
        """Any msgpack value as one frame, unchecked; see `send_raw` for what is owed."""
        return self.send_raw(encode_message(message))

    def send_raw(self, data: bytes) -> bytes:
        """`data` as it is (any bytes, whole frames or not), returned for writing. Every
        frame it completes is owed one response, under the id the worker will answer it
        with (nil for an unreadable frame), exactly as the worker counts."""
        with self._sent_lock:
            reads = self._sent.feed(data)
        for read in reads:
            self._owed.owe(read.answer_id)
        return data

    def receive_data(self, data: bytes) -> list[HostItem]:
        """The frames completed by `data`, in order, as typed items."""
        return [self._interpret(read) for read in self._reader.feed(data)]

    def _interpret(self, read: Read) -> HostItem:
        if read.error is not None or not isinstance(read.value, dict):
            error = read.error or BridgeError(
                ErrorType.INVALID_FRAME,
                f"a frame must hold a msgpack map, got {type(read.value).__name__}",
            )
            return InvalidFrame(error, read.payload)
        message: dict[str, Any] = read.value
        if "id" not in message:
            name = message.get("event")
            if not isinstance(name, str):
                return Unexpected(message, "neither a response (no id) nor an event")
            if name == "ready":
                self._learn_limits(message.get("limits"))
            return Event(name, message)
        return self._response(message)

    def _response(self, message: dict[str, Any]) -> Response | Unexpected:
        answer_id, success = message["id"], message.get("success")
        if not is_wire_id(answer_id):
            return Unexpected(message, f"id {answer_id!r:.100} is not a request id")
        if not isinstance(success, bool):
            return Unexpected(message, "a response needs a bool success")
        error = message.get("error")
        if success and "result" not in message:
            return Unexpected(message, "a successful response needs a result")
        if not success and not isinstance(error, dict):
            return Unexpected(message, "a failed response needs an error map")
        if not self._owed.settle(answer_id):
            return Unexpected(message, f"no response is owed for id {answer_id!r}")
        return Response(answer_id, success, message.get("result"), error, message)

    def _learn_limits(self, limits: Any) -> None:
        if not isinstance(limits, dict):
            return
        max_bytes, max_items = limits.get("max_frame_bytes"), limits.get("max_frame_items")
        with self._sent_lock:
            if isinstance(max_bytes, int) and not isinstance(max_bytes, bool):
                self._sent.max_frame_bytes = max_bytes
            if isinstance(max_items, int) and not isinstance(max_items, bool):
                self._sent.max_frame_items = max_items
