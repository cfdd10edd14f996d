"""The command table: one function per command, its arguments a type read from the
request's `args` map (`ArgsType`): a pydantic `Args` model, or for the control commands a
plain dataclass, so the first request after start-up is answered before pydantic loads.

Adding a command is adding an entry: declare an `Args` model, decorate the handler with
`@table.command("name", ArgsModel)` in the module's table, and name the command in
`bridge.commands.registry`, which merges the tables and decides which commands are enabled.
A command's handler is async and runs as its own task; a control command's
(`@table.control`) is a plain function, answered in the loop's turn that read it.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, Generic, Protocol, Self, TypeVar

from dspy_bridge.protocol.record import record

if TYPE_CHECKING:
    from dspy_bridge.domain.host import HostCaller
    from dspy_bridge.domain.sessions import SessionStore
    from dspy_bridge.domain.stats import Stats
    from dspy_bridge.io.logs import LogQueue
    from dspy_bridge.io.outbox import OutboxBudget
    from dspy_bridge.options import WorkerOptions


class ArgsType(Protocol):
    """A command's arguments, as its handler receives them."""

    @classmethod
    def read(cls, value: dict[Any, Any], context: str) -> Self:
        """The arguments `value` holds, or invalid_args (its message prefixed by
        `context`) naming each failing field."""
        ...


ArgsT = TypeVar("ArgsT", bound=ArgsType)


class ControlPort(Protocol):
    """What control commands read of the serving worker and ask of it."""

    @property
    def worker_id(self) -> str: ...

    @property
    def uptime_s(self) -> float: ...

    @property
    def shutting_down(self) -> bool: ...

    @property
    def work_in_flight(self) -> int: ...

    @property
    def engine_state(self) -> str: ...

    @property
    def stats(self) -> Stats: ...

    @property
    def outbox_budget(self) -> OutboxBudget: ...

    @property
    def log_queue(self) -> LogQueue | None: ...

    def cancel(self, request_id: int | str) -> bool: ...

    def callback_counts(self) -> dict[str, int]: ...

    def settle_callback(
        self, callback_id: str, result: Any, error: dict[str, Any] | None
    ) -> str | None:
        """The host's answer to a callback: `accepted`, `not_waiting`, or None when this
        worker never issued that id."""
        ...

    def begin_shutdown(self, grace_ms: int) -> None: ...


@record
class RequestContext:
    """What a handler may use: the request's id, the worker's settings and session store,
    the engine (awaited: DSPy may still be loading), events, the control port, and (for
    DSPy commands) the way to call the host's functions."""

    request_id: int | str
    options: WorkerOptions
    sessions: SessionStore
    engine: Callable[[], Awaitable[ModuleType]]
    emit_event: Callable[..., object]
    control: ControlPort
    host: HostCaller | None = None

    def progress(self, **fields: Any) -> None:
        self.emit_event("progress", request_id=self.request_id, **fields)


@dataclass(frozen=True, slots=True)
class CommandSpec(Generic[ArgsT]):
    name: str
    args_model: type[ArgsT]
    # Async for a command; for a control command, a plain function (see `control`).
    handler: Callable[[RequestContext, ArgsT], Any]
    # Control commands are answered even at the in-flight limit and during shutdown, at
    # once: they never wait, so they take no task and no turn of the loop in between.
    control: bool = False
    # DSPy commands: a worker whose engine failed to load answers engine_unavailable.
    needs_engine: bool = False


class CommandTable:
    def __init__(self, *, needs_engine: bool = False) -> None:
        self._specs: dict[str, CommandSpec[Any]] = {}
        self._needs_engine = needs_engine

    def command(
        self, name: str, args_model: type[ArgsT]
    ) -> Callable[
        [Callable[[RequestContext, ArgsT], Awaitable[Any]]],
        Callable[[RequestContext, ArgsT], Awaitable[Any]],
    ]:
        def register(
            handler: Callable[[RequestContext, ArgsT], Awaitable[Any]],
        ) -> Callable[[RequestContext, ArgsT], Awaitable[Any]]:
            self._add(CommandSpec(name, args_model, handler, False, self._needs_engine))
            return handler

        return register

    def control(
        self, name: str, args_model: type[ArgsT]
    ) -> Callable[[Callable[[RequestContext, ArgsT], Any]], Callable[[RequestContext, ArgsT], Any]]:
        def register(
            handler: Callable[[RequestContext, ArgsT], Any],
        ) -> Callable[[RequestContext, ArgsT], Any]:
            if inspect.iscoroutinefunction(handler):
                raise TypeError(f"control command {name!r} must not be async: it never waits")
            self._add(CommandSpec(name, args_model, handler, True, self._needs_engine))
            return handler

        return register

    def _add(self, spec: CommandSpec[Any]) -> None:
        if spec.name in self._specs:
            raise ValueError(f"command {spec.name!r} registered twice")
        self._specs[spec.name] = spec

    def get(self, name: str) -> CommandSpec[Any] | None:
        return self._specs.get(name)

    def names(self) -> list[str]:
        return list(self._specs)
