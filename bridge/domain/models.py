"""The base of every model read from the wire, and the validation helpers they share."""

from __future__ import annotations

from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dspy_bridge.protocol.errors import BridgeError, invalid_fields
from dspy_bridge.protocol.validation import validate, validation_errors


class Args(BaseModel):
    """Base for command arguments: unknown keys, NaN and type coercion are all rejected."""

    model_config = ConfigDict(
        extra="forbid", strict=True, allow_inf_nan=False, frozen=True, defer_build=True
    )

    @classmethod
    def read(cls, value: dict[Any, Any], context: str) -> Self:
        """The arguments `value` holds, or invalid_args naming each failing field."""
        return validate(cls, value, context=context)


SessionId = Annotated[str, Field(min_length=1, max_length=256)]
ProgramId = Annotated[str, Field(min_length=1, max_length=256)]
# A host function's name: the LM writes it back, so an identifier.
FunctionName = Annotated[str, Field(min_length=1, max_length=64,
                                    pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


def invalid_from(exc: ValidationError, prefix: str) -> BridgeError:
    return invalid_fields([(f"{prefix}.{name}" if name != "(root)" else prefix, message)
                           for name, message in validation_errors(exc)])
