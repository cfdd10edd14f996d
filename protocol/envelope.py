"""The message shapes on the wire: requests in; responses and events out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dspy_bridge.protocol.errors import MAX_FIELD_ERRORS, BridgeError, ErrorType, invalid_fields

ModelT = TypeVar("ModelT", bound=BaseModel)

RequestId = Annotated[int, Field(ge=0)] | str


class RequestShape(BaseModel):
    """What a request must be. Well-formed requests take a shorter way (`parse_request`);
    this model decides the rest and words their errors."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    id: RequestId
    command: Annotated[str, Field(min_length=1)]
    args: dict[Any, Any] = Field(default_factory=dict)
    timeout_ms: Annotated[int, Field(gt=0)] | None = None

    @field_validator("args", "timeout_ms", mode="before")
    @classmethod
    def _present_means_typed(cls, value: Any) -> Any:
        # Optional means absent, never nil: a field that is present must have its type.
        if value is None:
            raise ValueError("must not be nil (leave the field out instead)")
        return value


@dataclass(frozen=True, slots=True)
class Request:
    """A valid request (see `RequestShape`)."""

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


REQUEST_KEYS = frozenset(RequestShape.model_fields)


def parse_request(value: Any, frame_bytes: int = 0) -> Request:
    """Validate a decoded frame as a request, or raise invalid_frame / invalid_request.

    A request whose fields plainly have their types (the common case) is read directly,
    without pydantic's ≈ 5 µs; any other goes through `RequestShape`, which accepts what
    it accepts and words what it refuses (tests/test_protocol.py holds the two equal)."""
    if not isinstance(value, dict):
        raise BridgeError(
            ErrorType.INVALID_FRAME,
            f"a frame must hold a msgpack map, got {type(value).__name__}",
        )
    if _plainly_valid(value):
        return Request(value["id"], value["command"], value.get("args", {}),
                       value.get("timeout_ms"), frame_bytes)
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


def validate(
    model: type[ModelT],
    value: Any,
    *,
    error_type: ErrorType = ErrorType.INVALID_ARGS,
    context: str = "",
) -> ModelT:
    """`model.model_validate(value)`, its failures as one error naming the fields.

    A map with many unknown keys is refused by counting them, before pydantic would
    build one error object per key (500,000 keys would take seconds and megabytes)."""
    if isinstance(value, dict) and len(value) > len(model.model_fields) + MAX_FIELD_ERRORS:
        unknown = [key for key in value if key not in model.model_fields]
        if len(unknown) > MAX_FIELD_ERRORS:
            raise invalid_fields(
                [(str(key)[:100], "Extra inputs are not permitted") for key in unknown],
                error_type=error_type,
                context=context,
            )
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        errors = validation_errors(exc)
        raise invalid_fields(errors, error_type=error_type, context=context) from None


def request_id_of(value: Any) -> int | str | None:
    """The id to answer a rejected frame with: its own when valid, else nil."""
    if isinstance(value, dict):
        candidate = value.get("id")
        if isinstance(candidate, str) or (
            isinstance(candidate, int) and not isinstance(candidate, bool) and candidate >= 0
        ):
            return candidate
    return None


def validation_errors(exc: ValidationError) -> list[tuple[str, str]]:
    """Pydantic's errors as (dotted field path, message) pairs, one per failing field.

    Union members each report their own failure for the same input; one line per field
    is what a person wants to read, so only the first is kept.
    """
    seen: dict[str, str] = {}
    for error in exc.errors(include_url=False, include_input=False):
        path = ".".join(str(part) for part in error["loc"] if not _is_union_tag(part))
        seen.setdefault(path or "(root)", error["msg"])
    return list(seen.items())


def _is_union_tag(part: str | int) -> bool:
    # Pydantic names the union member tried (e.g. "int", "constrained-int", "str") in loc.
    return isinstance(part, str) and part in {"int", "str", "constrained-int", "constrained-str"}


def ok_response(request_id: int | str | None, result: Any) -> dict[str, Any]:
    return {"id": request_id, "success": True, "result": result}


def error_response(request_id: int | str | None, error: BridgeError) -> dict[str, Any]:
    return {"id": request_id, "success": False, "error": error.to_wire()}


def event(name: str, **fields: Any) -> dict[str, Any]:
    return {"event": name, **fields}
