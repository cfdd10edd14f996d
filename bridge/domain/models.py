"""The base of every model read from the wire, and the validation helpers they share."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dspy_bridge.protocol.envelope import validation_errors
from dspy_bridge.protocol.errors import BridgeError, invalid_fields


class Args(BaseModel):
    """Base for command arguments: unknown keys, NaN and type coercion are all rejected."""

    model_config = ConfigDict(
        extra="forbid", strict=True, allow_inf_nan=False, frozen=True, defer_build=True
    )


SessionId = Annotated[str, Field(min_length=1, max_length=256)]
ProgramId = Annotated[str, Field(min_length=1, max_length=256)]


def invalid_from(exc: ValidationError, prefix: str) -> BridgeError:
    return invalid_fields([(f"{prefix}.{name}" if name != "(root)" else prefix, message)
                           for name, message in validation_errors(exc)])
