"""Validation by pydantic models, its failures as the protocol's typed errors: the
envelope's fallback (`RequestShape`) and every command's argument model use it.

Kept apart from `envelope` so that a worker answers its first requests, plainly valid
ones, before pydantic is imported (it is most of start-up's import time)."""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dspy_bridge.protocol.errors import MAX_FIELD_ERRORS, ErrorType, invalid_fields

ModelT = TypeVar("ModelT", bound=BaseModel)

RequestId = Annotated[int, Field(ge=0)] | str


class RequestShape(BaseModel):
    """What a request must be. Well-formed requests take a shorter way
    (`envelope.parse_request`); this model decides the rest and words their errors."""

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
