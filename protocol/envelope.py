"""The message shapes on the wire: requests in; responses and events out."""

from __future__ import annotations

from dataclasses import field
from typing import Any

from dspy_bridge.protocol.errors import BridgeError, ErrorType
from dspy_bridge.protocol.record import record


@record
class Request:
    """A valid request (see `protocol.validation.RequestShape`)."""

    id: int | str
    command: str
    args: dict[Any, Any] = field(default_factory=dict)
    timeout_ms: int | None = None
    # The msgpack size of the frame it came in (not a wire field: set by the reader).
    frame_bytes: int = 0

    def to_wire(self) -> dict[str, Any]:
        """The request as the host sent it (a `timeout_ms` it left out stays out)."""
        wire: dict[str, Any] = {"id": self.id, "command": self.command, "args": self.args}
        if self.timeout_ms is not None:
            wire["timeout_ms"] = self.timeout_ms
        return wire


# `RequestShape`'s fields (tests/test_protocol.py holds them equal): written out, so the
# common request is read without importing pydantic.
REQUEST_KEYS = frozenset({"id", "command", "args", "timeout_ms"})


def parse_request(value: Any, frame_bytes: int = 0) -> Request:
    """Validate a decoded frame as a request, or raise invalid_frame / invalid_request.

    A request whose fields plainly have their types (the common case) is read directly,
    without pydantic's ≈ 5 µs; any other goes through `RequestShape`, which accepts what
    it accepts and words what it refuses (tests/test_protocol.py holds the two equal).
    Pydantic is imported then, not before: the first reply after start-up needs none."""
    if not isinstance(value, dict):
        raise BridgeError(
            ErrorType.INVALID_FRAME,
            f"a frame must hold a msgpack map, got {type(value).__name__}",
        )
    if _plainly_valid(value):
        return Request(value["id"], value["command"], value.get("args", {}),
                       value.get("timeout_ms"), frame_bytes)
    from dspy_bridge.protocol.validation import RequestShape, validate

    shape = validate(
        RequestShape, value, error_type=ErrorType.INVALID_REQUEST, context="malformed request: "
    )
    return Request(shape.id, shape.command, shape.args, shape.timeout_ms, frame_bytes)


def _plainly_valid(value: dict[Any, Any]) -> bool:
    """Whether `RequestShape` surely accepts `value` as it is: exact types only."""
    if not REQUEST_KEYS.issuperset(value):
        return False
    request_id, command = value.get("id"), value.get("command")
    if not ((request_id.__class__ is int and request_id >= 0) or request_id.__class__ is str):
        return False
    if command.__class__ is not str or not command:
        return False
    if "args" in value and value["args"].__class__ is not dict:
        return False
    timeout = value.get("timeout_ms", 1)
    return timeout.__class__ is int and timeout > 0


def request_id_of(value: Any) -> int | str | None:
    """The id to answer a rejected frame with: its own when valid, else nil."""
    if isinstance(value, dict):
        candidate = value.get("id")
        if isinstance(candidate, str) or (
            isinstance(candidate, int) and not isinstance(candidate, bool) and candidate >= 0
        ):
            return candidate
    return None


def ok_response(request_id: int | str | None, result: Any) -> dict[str, Any]:
    return {"id": request_id, "success": True, "result": result}


def error_response(request_id: int | str | None, error: BridgeError) -> dict[str, Any]:
    return {"id": request_id, "success": False, "error": error.to_wire()}


def event(name: str, **fields: Any) -> dict[str, Any]:
    return {"event": name, **fields}
