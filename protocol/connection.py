"""The worker's side of the conversation, sans-I/O: bytes from the host become requests
(or rejected frames), each owed exactly one response; responses and events become bytes,
held to the limits the worker announces. The host's side is `host.HostConnection`; what
both share is in `peer`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dspy_bridge.protocol import codec, envelope
from dspy_bridge.protocol.errors import BridgeError, ErrorType
from dspy_bridge.protocol.framing import (
    DEFAULT_MAX_FRAME_BYTES,
    HEADER_SIZE,
)
from dspy_bridge.protocol.peer import (
    LocalProtocolError,
    Peer,
    Read,
    encode_message,
    id_in_flight_error,
    is_wire_id,
)
from dspy_bridge.protocol.record import record

__all__ = ["Connection", "LocalProtocolError", "Rejected", "Sent", "Unsendable"]

@dataclass(frozen=True, slots=True)
class Rejected:
    """A frame that is not a valid request: answer it with this error, under this id."""

    request_id: int | str | None
    error: BridgeError
    value: Any = None


@record
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


class Connection(Peer):
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
    def _interpret(read: Read) -> envelope.Request | Rejected:
        if read.error is not None:
            return Rejected(read.answer_id, read.error, read.value)
        try:
            return envelope.parse_request(read.value, len(read.payload or b""))
        except BridgeError as error:
            return Rejected(read.answer_id, error, read.value)

    def send_response(self, message: dict[str, Any]) -> Sent:
        """The one response owed under `message["id"]`, or the error that replaces it
        when it cannot go out as it is.

        Raises LocalProtocolError, settling nothing, when `message` is not a response or
        no response is owed under its id (it was answered already, or never received)."""
        if (
            "id" not in message
            or not is_wire_id(message["id"])
            or not isinstance(message.get("success"), bool)
        ):
            raise LocalProtocolError(f"not a response (needs id and success): {message!r:.200}")
        if self._owed.count(message["id"]) == 0:
            raise LocalProtocolError(f"no response is owed for id {message['id']!r}")
        try:
            frame = self._checked_frame(message)
        except Unsendable as problem:
            message = envelope.error_response(message["id"], _unsendable_error(problem))
            frame = encode_message(message)
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
            frame = encode_message(message)
        except codec.EncodeError as exc:
            raise Unsendable(None, f"could not be encoded: {exc}") from None
        size = len(frame) - HEADER_SIZE
        if size > self._max_reply_bytes:
            raise Unsendable("max_reply_bytes", f"would take {size} bytes")
        if not codec.within_limits_by_size(size, codec.MAX_DEPTH, self._max_items):
            problem = codec.limit_problem(
                message, codec.MAX_DEPTH, self._max_items, check_text=False
            )
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
