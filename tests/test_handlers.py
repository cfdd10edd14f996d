"""Command handlers in-process, against the narrow RequestContext: no worker process.

The context's parts are the real ones (options, session store, the DSPy engine module
with the mock LM); only the control port, which belongs to a serving worker, is a
plain object holding the figures a handler reads.
"""

from __future__ import annotations

import asyncio
import inspect
from dataclasses import dataclass, field, fields
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dspy_bridge.engine as engine_module
from dspy_bridge.commands import common, control, control_models, execute, lm, programs
from dspy_bridge.commands.table import RequestContext
from dspy_bridge.domain.sessions import SessionStore
from dspy_bridge.domain.stats import Stats
from dspy_bridge.io.logs import LogQueue
from dspy_bridge.io.outbox import OutboxBudget
from dspy_bridge.options import WorkerOptions
from dspy_bridge.protocol.errors import BridgeError, ErrorType


@dataclass
class Port:
    worker_id: str = "in-process"
    uptime_s: float = 1.0
    shutting_down: bool = False
    work_in_flight: int = 0
    engine_state: str = "ready"
    stats: Stats = field(default_factory=Stats)
    outbox_budget: OutboxBudget = field(default_factory=lambda: OutboxBudget(1024))
    log_queue: LogQueue | None = None
    shutdowns: list[int] = field(default_factory=list)

    def cancel(self, request_id: int | str) -> bool:
        return False

    def begin_shutdown(self, grace_ms: int) -> None:
        self.shutting_down = True
        self.shutdowns.append(grace_ms)


def context(
    store: SessionStore, port: Port | None = None, request_id: int = 1,
    options: WorkerOptions | None = None,
) -> RequestContext:
    async def engine() -> ModuleType:
        return engine_module

    events: list[dict[str, Any]] = []
    return RequestContext(request_id, options or WorkerOptions(), store, engine,
                          lambda name, **fields: events.append({"event": name, **fields}),
                          port or Port())


def run(handler: Any, ctx: RequestContext, args_model: Any, args: dict[str, Any]) -> Any:
    """A command's handler to its end (a control command's is a plain function)."""
    outcome = handler(ctx, args_model.read(args, ""))
    return asyncio.run(outcome) if inspect.iscoroutine(outcome) else outcome


def test_a_program_runs_through_the_handlers_alone() -> None:
    store = SessionStore(WorkerOptions().session_limits())
    ctx = context(store)
    run(lm.configure_lm, ctx, lm.ConfigureLmArgs,
        {"session_id": "s", "model": "mock", "extra": {"default": "42"}})
    created = run(programs.create_program, ctx, programs.CreateProgramArgs,
                  {"session_id": "s", "program_id": "p", "signature": "q -> a"})
    assert created["program_id"] == "p"
    result = run(execute.execute_program, ctx, execute.ExecuteProgramArgs,
                 {"session_id": "s", "program_id": "p", "inputs": {"q": "?"}})
    assert result["outputs"] == {"a": "42"} and result["lm_source"] == "session"
    assert store.get("s") is not None and store.get("s").stored_bytes > 0  # type: ignore[union-attr]


def test_handlers_raise_typed_errors() -> None:
    store = SessionStore(WorkerOptions(max_session_bytes=100).session_limits())
    ctx = context(store)
    with pytest.raises(BridgeError) as missing:
        run(programs.get_program, ctx, common.ProgramRef, {"program_id": "nope"})
    assert missing.value.type is ErrorType.NOT_FOUND
    with pytest.raises(BridgeError) as too_big:
        run(programs.create_program, ctx, programs.CreateProgramArgs,
            {"signature": "q -> a", "instructions": "x" * 500})
    assert too_big.value.type is ErrorType.LIMIT_EXCEEDED
    assert too_big.value.details is not None
    assert too_big.value.details["limit"] == "max_session_bytes"


def test_control_handlers_read_and_ask_the_port() -> None:
    options = WorkerOptions(default_grace_ms=750)
    store = SessionStore(options.session_limits())
    port = Port(engine_state="failed", work_in_flight=3)
    ctx = context(store, port, request_id=9, options=options)
    ping = run(control.ping, ctx, control.NoArgs, {})
    assert (ping["status"], ping["in_flight"], ping["dspy_loaded"]) == ("engine_failed", 3, False)
    with pytest.raises(BridgeError) as own:
        run(control.cancel, ctx, control.CancelArgs, {"request_id": 9})
    assert own.value.type is ErrorType.INVALID_ARGS
    result = run(control.shutdown, ctx, control.ShutdownArgs, {})
    assert result == {"shutting_down": True, "grace_ms": 750, "in_flight": 3}
    assert port.shutdowns == [750]


CONTROL_ARGS = st.dictionaries(
    st.sampled_from(["request_id", "grace_ms", "other"]),
    st.none() | st.booleans() | st.integers(-3, 2**64) | st.floats(allow_nan=True)
    | st.text(max_size=3) | st.lists(st.integers(), max_size=2),
    max_size=3,
)


@settings(max_examples=500, deadline=None)
@given(CONTROL_ARGS, st.sampled_from([control.NoArgs, control.CancelArgs, control.ShutdownArgs]))
def test_control_arguments_read_directly_as_their_models_read_them(
    value: dict[str, Any], kind: Any
) -> None:
    """A control command's arguments are read without pydantic when plainly valid: what
    that reads must be what the pydantic model of the same name reads, and anything
    else is the model's to accept or word."""
    model = getattr(control_models, kind.__name__)
    assert [f.name for f in fields(kind)] == list(model.model_fields)
    try:
        expected: Any = kind(**model.read(value, "ctx: ").model_dump())
    except BridgeError as refused:
        expected = refused.to_wire()
    try:
        read: Any = kind.read(value, "ctx: ")
    except BridgeError as refused:
        read = refused.to_wire()
    assert read == expected and type(read) is type(expected)
    if isinstance(read, kind) and "request_id" in value:
        assert type(read.request_id) is type(value["request_id"])  # type: ignore[attr-defined]
