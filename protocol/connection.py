"""The protocol stack for one peer: feed it bytes, get requests; give it messages, get bytes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dspy_bridge.protocol import codec, envelope
from dspy_bridge.protocol.errors import BridgeError, ErrorType
from dspy_bridge.protocol.framing import (
    DEFAULT_MAX_FRAME_BYTES,
    Frame,
    FrameDecoder,
    OversizedFrame,
    encode_frame,
)


@dataclass(frozen=True, slots=True)
class Rejected:
    """A frame that is not a valid request: answer it with this error, under this id."""

    request_id: int | str | None
    error: BridgeError
    value: Any = None


class Connection:
    """Worker side: bytes from the host become `Request`s or `Rejected` frames."""

    def __init__(
        self,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        max_frame_items: int = codec.DEFAULT_MAX_ITEMS,
    ) -> None:
        self._decoder = FrameDecoder(max_frame_bytes)
        self._max_items = max_frame_items

    @property
    def has_partial_frame(self) -> bool:
        return self._decoder.buffered > 0

    def receive_data(self, data: bytes) -> list[envelope.Request | Rejected]:
        return [self._interpret(item) for item in self._decoder.feed(data)]

    def _interpret(self, item: Frame | OversizedFrame) -> envelope.Request | Rejected:
        if isinstance(item, OversizedFrame):
            return Rejected(
                None,
                BridgeError(
                    ErrorType.INVALID_FRAME,
                    f"frame of {item.length} bytes exceeds the limit of "
                    f"{self._decoder.max_frame_bytes} bytes; its bytes were skipped",
                    details={
                        "length": item.length,
                        "limit": "max_frame_bytes",
                        "max_frame_bytes": self._decoder.max_frame_bytes,
                    },
                ),
            )
        try:
            value = codec.unpack(item.payload, self._max_items)
        except codec.TooDeep as error:  # decoded, so its id can still be answered
            return Rejected(envelope.request_id_of(error.value), error, error.value)
        except BridgeError as error:
            return Rejected(None, error)
        try:
            return envelope.parse_request(value)
        except BridgeError as error:
            return Rejected(envelope.request_id_of(value), error, value)

    @staticmethod
    def encode(message: dict[str, Any]) -> bytes:
        """A response or event as a frame; raises codec.EncodeError if it cannot be packed."""
        return encode_frame(codec.pack(message))
