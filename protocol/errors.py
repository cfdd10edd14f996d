"""Typed protocol errors: every failure a host sees is one of these types."""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorType(StrEnum):
    INVALID_FRAME = "invalid_frame"
    INVALID_REQUEST = "invalid_request"
    UNKNOWN_COMMAND = "unknown_command"
    INVALID_ARGS = "invalid_args"
    NOT_FOUND = "not_found"
    ALREADY_EXISTS = "already_exists"
    LM_NOT_CONFIGURED = "lm_not_configured"
    LM_ERROR = "lm_error"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    LIMIT_EXCEEDED = "limit_exceeded"
    SHUTTING_DOWN = "shutting_down"
    ENGINE_UNAVAILABLE = "engine_unavailable"
    HOST_ERROR = "host_error"
    INTERNAL = "internal"


# Whether retrying the same request later can succeed, when the raiser does not say.
DEFAULT_RETRYABLE: dict[ErrorType, bool] = {
    ErrorType.TIMEOUT: True,
    ErrorType.LIMIT_EXCEEDED: True,
    ErrorType.SHUTTING_DOWN: True,
    # On this worker it never will; the host's pool replaces such a worker.
    ErrorType.ENGINE_UNAVAILABLE: True,
}

TRACEBACK_LIMIT = 4000
# A reply names at most this many failing fields (and how many more there were), so a
# request with 500,000 bad keys gets a small answer and a short log line.
MAX_FIELD_ERRORS = 20


class BridgeError(Exception):
    """An error that becomes an error response, carrying everything the host needs."""

    def __init__(
        self,
        error_type: ErrorType,
        message: str,
        *,
        retryable: bool | None = None,
        details: dict[str, Any] | None = None,
        traceback: str | None = None,
    ) -> None:
        super().__init__(message)
        self.type = error_type
        self.message = message
        self.retryable = (
            DEFAULT_RETRYABLE.get(error_type, False) if retryable is None else retryable
        )
        self.details = details
        self.traceback = traceback

    def to_wire(self) -> dict[str, Any]:
        error: dict[str, Any] = {
            "type": self.type.value,
            "message": self.message,
            "retryable": self.retryable,
        }
        if self.details:
            error["details"] = self.details
        if self.traceback is not None:
            error["traceback"] = self.traceback[-TRACEBACK_LIMIT:]
        return error


def field_errors(errors: list[tuple[str, str]], omitted: int = 0) -> dict[str, Any]:
    """The `details` shape for per-field failures: `{"errors": [{field, message}, ...]}`,
    with `omitted` counting the failures past MAX_FIELD_ERRORS that are not listed."""
    shown = errors[:MAX_FIELD_ERRORS]
    details: dict[str, Any] = {
        "errors": [{"field": field, "message": message} for field, message in shown]
    }
    omitted += len(errors) - len(shown)
    if omitted:
        details["omitted"] = omitted
    return details


def invalid_fields(
    errors: list[tuple[str, str]],
    *,
    error_type: ErrorType = ErrorType.INVALID_ARGS,
    context: str = "",
    omitted: int = 0,
) -> BridgeError:
    """One error naming every failing (field, message), up to MAX_FIELD_ERRORS of them:
    in its sentence and its details."""
    details = field_errors(errors, omitted)
    sentence = "; ".join(f"{e['field']}: {e['message']}" for e in details["errors"])
    if "omitted" in details:
        sentence += f"; and {details['omitted']} more"
    return BridgeError(error_type, context + sentence, details=details)


def invalid_field(field: str, message: str) -> BridgeError:
    return invalid_fields([(field, message)])
