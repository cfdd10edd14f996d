"""Host functions: what a session declares it can run (`register_tools`), and the port
through which a request's DSPy code asks the host to run one (a callback).

The serve layer implements `HostCaller` (serve/callbacks); the engine calls it from a
ReAct tool, a reward or a mock generator. Nothing here knows frames or DSPy.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from dspy_bridge.protocol.errors import BridgeError, ErrorType

MAX_TOOLS = 128  # per session
RESERVED_NAMES = frozenset({"finish"})  # ReAct's own tool


class Purpose(StrEnum):
    TOOL = "tool"
    REWARD = "reward"
    MOCK = "mock"
    METRIC = "metric"


class Failure(StrEnum):
    """Why a callback gave no usable answer (`details.reason` of host_error)."""

    ERROR = "error"  # the host answered an error
    MALFORMED = "malformed"  # the answer is not what the purpose needs
    TIMEOUT = "timeout"  # no answer within the callback's time
    UNKNOWN_FUNCTION = "unknown_function"  # not declared in the session: never sent
    INVALID_ARGUMENTS = "invalid_arguments"  # the LM's arguments fail the schema: never sent
    ENDED = "request_ended"  # the request stopped waiting (a thread outliving it)
    UNSENDABLE = "unsendable"  # the callback frame would break the protocol's limits


@dataclass(frozen=True, slots=True)
class HostFunction:
    """One declared host function, with the msgpack size it stores."""

    name: str
    description: str
    parameters: dict[str, Any]
    stored_bytes: int
    registered_at: float = field(default_factory=time.time)

    def to_wire(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description,
                "parameters": self.parameters}


class HostCallFailed(Exception):
    """A callback that gave no usable answer. A ReAct tool shows `message` to the LM as
    its observation; anything else makes it the call's `host_error`."""

    def __init__(self, reason: Failure, function: str, purpose: Purpose, message: str, *,
                 retryable: bool = False, callback_id: str | None = None,
                 host_type: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.function = function
        self.purpose = purpose
        self.message = message
        self.retryable = retryable
        self.callback_id = callback_id
        self.host_type = host_type

    def to_error(self) -> BridgeError:
        details: dict[str, Any] = {"reason": self.reason.value, "function": self.function,
                                   "purpose": self.purpose.value}
        if self.callback_id is not None:
            details["callback_id"] = self.callback_id
        if self.host_type is not None:
            details["host_error_type"] = self.host_type
        return BridgeError(ErrorType.HOST_ERROR,
                           f"host function {self.function!r} ({self.purpose.value}): "
                           f"{self.message}", retryable=self.retryable, details=details)


class HostCaller(Protocol):
    """One request's way to the host. `call` awaits the answer on the event loop;
    `call_blocking` is for DSPy code running in a thread (its own loop is the worker's).
    Both raise HostCallFailed; `check` tells a usable result from a malformed one."""

    async def call(self, function: str, purpose: Purpose, args: dict[str, Any],
                   check: Callable[[Any], str | None] | None = None) -> Any: ...

    def call_blocking(self, function: str, purpose: Purpose, args: dict[str, Any],
                      check: Callable[[Any], str | None] | None = None) -> Any: ...


# ----- checks of a callback's result, by purpose -----


def finite_number(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return f"a reward must be a finite number, got {type(value).__name__}"
    return None


def unit_score(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        return f"a metric's score must be a number from 0 to 1, got {value!r:.100}"
    return None
