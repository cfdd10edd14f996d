"""Admission: the checks a request passes before its command runs, as a chain.

Each check has one signature — `(request, spec, worker) -> BridgeError | None` — and the
first error refuses the request (structlog's processor chain is the model). Adding a
rule is adding a function to `CHECKS`; the order there is the order of precedence.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from dspy_bridge.commands.table import CommandSpec
from dspy_bridge.protocol.envelope import Request
from dspy_bridge.protocol.errors import BridgeError, ErrorType


class AdmissionState(Protocol):
    """What the checks read of the worker when a request arrives."""

    @property
    def exiting(self) -> bool: ...

    @property
    def shutting_down(self) -> bool: ...

    @property
    def work_in_flight(self) -> int: ...

    @property
    def max_in_flight(self) -> int: ...

    @property
    def work_bytes_in_flight(self) -> int: ...

    @property
    def max_in_flight_bytes(self) -> int: ...

    @property
    def engine_state(self) -> str: ...

    def engine_error(self) -> BridgeError: ...


Check = Callable[[Request, CommandSpec[Any], AdmissionState], BridgeError | None]


def not_shutting_down(
    request: Request, spec: CommandSpec[Any], state: AdmissionState
) -> BridgeError | None:
    # Control commands are served during shutdown, until the exit is decided.
    if state.exiting or (state.shutting_down and not spec.control):
        return BridgeError(
            ErrorType.SHUTTING_DOWN, "the worker is shutting down and takes no new work"
        )
    return None


def engine_available(
    request: Request, spec: CommandSpec[Any], state: AdmissionState
) -> BridgeError | None:
    if spec.needs_engine and state.engine_state == "failed":
        return state.engine_error()
    return None


def room_in_flight(
    request: Request, spec: CommandSpec[Any], state: AdmissionState
) -> BridgeError | None:
    # Control commands are never refused by the in-flight limit.
    if not spec.control and state.work_in_flight >= state.max_in_flight:
        return BridgeError(
            ErrorType.LIMIT_EXCEEDED,
            f"{state.max_in_flight} requests already in flight",
            details={"limit": "max_in_flight", "max_in_flight": state.max_in_flight},
        )
    return None


def bytes_in_flight(
    request: Request, spec: CommandSpec[Any], state: AdmissionState
) -> BridgeError | None:
    # The requests a worker holds are bounded in bytes too: 256 requests of 64 MiB each
    # would be 16 GiB. One request alone may always be admitted (its frame was read).
    if spec.control or state.work_bytes_in_flight == 0:
        return None
    if state.work_bytes_in_flight + request.frame_bytes > state.max_in_flight_bytes:
        return BridgeError(
            ErrorType.LIMIT_EXCEEDED,
            f"the requests in flight already hold {state.work_bytes_in_flight} bytes; this "
            f"one's {request.frame_bytes} would pass {state.max_in_flight_bytes}",
            details={"limit": "max_in_flight_bytes",
                     "max_in_flight_bytes": state.max_in_flight_bytes,
                     "in_flight_bytes": state.work_bytes_in_flight,
                     "size": request.frame_bytes},
        )
    return None


# An id still in flight never gets here: the Connection refuses it as it is read.
CHECKS: tuple[Check, ...] = (not_shutting_down, engine_available, room_in_flight,
                             bytes_in_flight)


def refusal(request: Request, spec: CommandSpec[Any], state: AdmissionState) -> BridgeError | None:
    """The first check's error, or None: the request may run."""
    for check in CHECKS:
        error = check(request, spec, state)
        if error is not None:
            return error
    return None


def unknown_command(request: Request, known: list[str]) -> BridgeError:
    return BridgeError(
        ErrorType.UNKNOWN_COMMAND,
        f"unknown command {request.command!r}",
        details={"command": request.command, "known": known},
    )
