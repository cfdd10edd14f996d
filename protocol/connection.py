"""The protocol stack for one peer, sans-I/O: feed it bytes, get typed messages; give it
messages, get bytes. Like h11's `Connection`, it owns the rules of the conversation, not
just its encoding: ids are unique while in flight, and every request is answered
exactly once.

`Connection` is the worker's side, `HostConnection` the host's. Both read frames with
the same `_FrameReader` (framing, then msgpack with limits) and count the responses
owed per id in the same `_OwedResponses`.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any

from dspy_bridge.protocol import codec, envelope
from dspy_bridge.protocol.errors import BridgeError, ErrorType, field_errors
from dspy_bridge.protocol.framing import (
    DEFAULT_MAX_FRAME_BYTES,
    HEADER_SIZE,
    Frame,
    FrameDecoder,
    OversizedFrame,
    encode_frame,
)

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


# ----- shared: reading frames, counting owed responses -----


@dataclass(frozen=True, slots=True)
class _Read:
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


class _FrameReader:
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

    def feed(self, data: bytes) -> list[_Read]:
        return [self._read(item) for item in self._decoder.feed(data)]

    def _read(self, item: Frame | OversizedFrame) -> _Read:
        if isinstance(item, OversizedFrame):
            return _Read(
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
            return _Read(item.payload, codec.unpack(item.payload, self.max_frame_items))
        except codec.TooDeep as error:  # decoded, so its id can still be answered
            return _Read(item.payload, error.value, error)
        except BridgeError as error:
            return _Read(item.payload, error=error)


class _OwedResponses:
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


def _is_wire_id(value: Any) -> bool:
    """A valid request id, or nil: what a response's id may be. Checked before a dict
    lookup, where True would equal 1, 1.0 would too, and a list would not hash."""
    return value is None or envelope.request_id_of({"id": value}) is not None


def _encode(message: Any) -> bytes:
    return encode_frame(codec.pack(message))


class _Peer:
    """What both roles share: the reader (with the limits on what this side reads), the
    owed responses and their queries."""

    def __init__(
        self,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        max_frame_items: int = codec.DEFAULT_MAX_ITEMS,
    ) -> None:
        self._reader = _FrameReader(max_frame_bytes, max_frame_items)
        self._owed = _OwedResponses()

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


# ----- the worker's side -----


@dataclass(frozen=True, slots=True)
class Rejected:
    """A frame that is not a valid request: answer it with this error, under this id."""

    request_id: int | str | None
    error: BridgeError
    value: Any = None


@dataclass(frozen=True, slots=True)
class Sent:
    """A response on its way: its frame, and the message that frame holds (the response
    given, or the error response that replaced it)."""

    frame: bytes
    message: dict[str, Any]


class Unsendable(Exception):
    """A message that cannot go out as it is: over a limit the peer enforces (`limit`
    names it, as in `details.limit`), or not encodable at all (`limit` is None)."""

    def __init__(self, limit: str | None, sentence: str) -> None:
        super().__init__(sentence)
        self.limit = limit
        self.sentence = sentence


class Connection(_Peer):
    """Worker side: bytes from the host become `Request`s or `Rejected` frames, each owed
    exactly one response, which `send_response` encodes (and refuses to encode twice).

    The worker holds what it sends to the limits it enforces on what it reads: a reply
    over `max_reply_bytes`, `max_frame_items` or the depth limit, or one that cannot be
    encoded, is answered with an error under its id instead, so the host still gets its
    one response; such an event is not sent (`Unsendable`).

    `receive_data` may run in another thread (the worker's reader) than the `send_*`
    methods (its event loop)."""

    def __init__(
        self,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        max_frame_items: int = codec.DEFAULT_MAX_ITEMS,
        max_reply_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    ) -> None:
        super().__init__(max_frame_bytes, max_frame_items)
        self._max_items = max_frame_items
        self._max_reply_bytes = max_reply_bytes

    def receive_data(self, data: bytes) -> list[envelope.Request | Rejected]:
        """The frames completed by `data`, in order. Every item is owed one response: a
        request under its id, a rejection under `request_id` (nil when unknowable); a
        request reusing an id still owed a response is rejected (`id_in_flight_error`)."""
        items: list[envelope.Request | Rejected] = []
        for read in self._reader.feed(data):
            item = self._interpret(read)
            if isinstance(item, Rejected):
                self._owed.owe(item.request_id)
            elif not self._owed.owe_first(item.id):
                item = Rejected(item.id, id_in_flight_error(item.id), read.value)
                self._owed.owe(item.request_id)
            items.append(item)
        return items

    @staticmethod
    def _interpret(read: _Read) -> envelope.Request | Rejected:
        if read.error is not None:
            return Rejected(read.answer_id, read.error, read.value)
        try:
            return envelope.parse_request(read.value)
        except BridgeError as error:
            return Rejected(read.answer_id, error, read.value)

    def send_response(self, message: dict[str, Any]) -> Sent:
        """The one response owed under `message["id"]`, or the error that replaces it
        when it cannot go out as it is.

        Raises LocalProtocolError, settling nothing, when `message` is not a response or
        no response is owed under its id (it was answered already, or never received)."""
        if (
            "id" not in message
            or not _is_wire_id(message["id"])
            or not isinstance(message.get("success"), bool)
        ):
            raise LocalProtocolError(f"not a response (needs id and success): {message!r:.200}")
        if self._owed.count(message["id"]) == 0:
            raise LocalProtocolError(f"no response is owed for id {message['id']!r}")
        try:
            frame = self._checked_frame(message)
        except Unsendable as problem:
            message = envelope.error_response(message["id"], _unsendable_error(problem))
            frame = _encode(message)
        self._owed.settle(message["id"])
        return Sent(frame, message)

    def send_event(self, message: dict[str, Any]) -> bytes:
        """The frame of an event (a map with a str `event` and no `id`); raises
        Unsendable when it cannot go out as it is."""
        if "id" in message or not isinstance(message.get("event"), str):
            raise LocalProtocolError(f"not an event (needs event, no id): {message!r:.200}")
        return self._checked_frame(message)

    def _checked_frame(self, message: dict[str, Any]) -> bytes:
        try:
            frame = _encode(message)
        except codec.EncodeError as exc:
            raise Unsendable(None, f"could not be encoded: {exc}") from None
        if len(frame) - HEADER_SIZE > self._max_reply_bytes:
            raise Unsendable(
                "max_reply_bytes", f"would take {len(frame) - HEADER_SIZE} bytes"
            )
        problem = codec.limit_problem(message, codec.MAX_DEPTH, self._max_items)
        if problem is not None:
            raise Unsendable(*problem)
        return frame


def _unsendable_error(problem: Unsendable) -> BridgeError:
    if problem.limit in {"max_reply_bytes", "max_frame_items", "max_depth"}:
        return BridgeError(
            ErrorType.LIMIT_EXCEEDED,
            f"the reply {problem.sentence}, beyond the protocol's limit ({problem.limit})",
            retryable=False,
            details={"limit": problem.limit},
        )
    return BridgeError(ErrorType.INTERNAL, f"the reply {problem.sentence}")


# ----- the host's side -----


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


class HostConnection(_Peer):
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
        self._sent = _FrameReader(worker_max_frame_bytes, worker_max_frame_items)
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
        frame = _encode(message)
        if not self._owed.owe_first(request.id):
            raise LocalProtocolError(f"request id {request.id!r} is already in flight")
        return frame

    def send_unchecked(self, message: Any) -> bytes:
        """Any msgpack value as one frame, unchecked; see `send_raw` for what is owed."""
        return self.send_raw(_encode(message))

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

    def _interpret(self, read: _Read) -> HostItem:
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
        if not _is_wire_id(answer_id):
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
