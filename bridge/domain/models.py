"""The base of every model read from the wire, and the validation helpers they share."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError

from dspy_bridge.protocol.envelope import validation_errors
from dspy_bridge.protocol.errors import BridgeError, invalid_fields


class Args(BaseModel):
    """Base for command arguments: unknown keys, NaN and type coercion are all rejected."""

    model_config = ConfigDict(
        extra="forbid", strict=True, allow_inf_nan=False, frozen=True, defer_build=True
    )


def invalid_from(exc: ValidationError, prefix: str) -> BridgeError:
    return invalid_fields([(f"{prefix}.{name}" if name != "(root)" else prefix, message)
                           for name, message in validation_errors(exc)])
