"""`execute_program`: the LM by precedence, the circuit breaker, the call, its usage."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field

from dspy_bridge.commands.common import (
    check_optional_lm,
    engine_of,
    find_session_program,
)
from dspy_bridge.commands.table import CommandTable, RequestContext
from dspy_bridge.domain.engine_port import Engine, LmHandle, ProgramHandle, Run
from dspy_bridge.domain.lm import CheckedLm, LmConfig, OptionalLm
from dspy_bridge.domain.models import Args, ProgramId, SessionId
from dspy_bridge.domain.sessions import Session
from dspy_bridge.domain.signatures import check_inputs
from dspy_bridge.domain.usage import ModelUsage, merge_usage
from dspy_bridge.protocol import codec
from dspy_bridge.protocol.errors import BridgeError, ErrorType

table = CommandTable(needs_engine=True)


class CallConfig(Args):
    """Per-call LM settings; they override the LM's own for this call only."""

    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    max_tokens: Annotated[int, Field(gt=0, le=10_000_000)] | None = None
    stop: Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=16)] | None = None
    seed: int | None = None
    cache: bool | None = None
    rollout_id: Annotated[int, Field(ge=0)] | None = None


class ExecuteProgramArgs(Args):
    session_id: SessionId | None = None
    program_id: ProgramId
    inputs: dict[str, Any] = Field(default_factory=dict)
    lm: OptionalLm
    config: CallConfig | None = None
    expected: dict[str, Any] | None = None
    # send the output fields as they are written (`stream` events), then the reply
    stream: bool = False


@table.command("execute_program", ExecuteProgramArgs)
async def execute_program(ctx: RequestContext, args: ExecuteProgramArgs) -> dict[str, Any]:
    started = time.perf_counter()
    call = ProgramCall.prepare(ctx, args.session_id, args.program_id, args.lm, args.inputs)
    check_inputs(call.program.spec, args.inputs)
    config = args.config.model_dump(exclude_none=True) if args.config else {}
    with ctx.sessions.using(call.session):  # from here the session is never evicted under us
        engine = await engine_of(ctx)
        lm, source = await call.lm(ctx, engine)
        run = await call_program(ctx, engine, call.program, lm, args.inputs, config,
                                 call.record, args.expected,
                                 stream_sink(ctx) if args.stream else None)
    result: dict[str, Any] = {"outputs": run.outputs}
    if run.trajectory is not None:
        result["trajectory"] = run.trajectory
    result.update({
        "lm": lm.model,
        "lm_source": source,
        "usage": merge_usage(call.usage).to_wire(),
        "duration_ms": round((time.perf_counter() - started) * 1000, 3),
    })
    return result


@dataclass(slots=True)
class ProgramCall:
    """What every command that runs a program sets up first: the session and program,
    the call's own LM config (checked), and the usage it records (the request's, and the
    session's book)."""

    session: Session
    program: ProgramHandle
    override: CheckedLm | None
    usage: dict[str, ModelUsage]
    record: Callable[[dict[str, ModelUsage]], None]

    @classmethod
    def prepare(cls, ctx: RequestContext, session_id: str | None, program_id: str,
                lm: LmConfig | None, sized: Any, what: str = "the inputs") -> ProgramCall:
        """Look the program up and check what needs no DSPy (`sized`: the values held
        to --max-input-bytes), before anything waits for the engine."""
        session, program = find_session_program(ctx, session_id, program_id)
        check_input_size(ctx, sized, what)
        override = check_optional_lm(ctx, lm, "lm")
        usage, record = usage_recorder(session)
        return cls(session, program, override, usage, record)

    async def lm(self, ctx: RequestContext, engine: Engine) -> tuple[LmHandle, str]:
        """The LM the call runs on, by precedence, and where it came from."""
        call_lm = None if self.override is None else await engine.lm(self.override,
                                                                      "lm.model")
        return resolve_lm(call_lm, self.program, self.session, ctx.sessions.default_lm)


def usage_recorder(
    session: Session,
) -> tuple[dict[str, ModelUsage], Callable[[dict[str, ModelUsage]], None]]:
    """This request's usage per model, and the engine's callback that adds to it and to
    the session's book."""
    usage: dict[str, ModelUsage] = {}

    def record(per_model: dict[str, ModelUsage]) -> None:
        for model, one in per_model.items():
            usage.setdefault(model, ModelUsage()).add(one)
        session.usage.add(per_model)

    return usage, record


def stream_sink(ctx: RequestContext) -> Callable[[str, dict[str, Any]], None]:
    """Where a streamed call's chunks go: events naming the request."""

    def sink(name: str, fields: dict[str, Any]) -> None:
        ctx.emit_event(name, request_id=ctx.request_id, **fields)

    return sink


def check_input_size(ctx: RequestContext, inputs: dict[str, Any], what: str = "the inputs") -> None:
    limit = ctx.options.max_input_bytes
    size = len(codec.pack(inputs))
    if size > limit:
        raise BridgeError(
            ErrorType.LIMIT_EXCEEDED,
            f"{what} take {size} bytes, over the limit of {limit}",
            details={"limit": "max_input_bytes", "max_input_bytes": limit, "size": size},
        )


async def call_program(
    ctx: RequestContext,
    engine: Engine,
    program: ProgramHandle,
    lm: LmHandle,
    inputs: dict[str, Any],
    config: dict[str, Any],
    record: Callable[[dict[str, ModelUsage]], None],
    expected: dict[str, Any] | None = None,
    on_stream: Callable[[str, dict[str, Any]], None] | None = None,
) -> Run:
    """One call of the program through the LM's circuit breaker."""
    breaker = ctx.sessions.breaker_for(lm)
    breaker.before_call(lm.model)
    try:
        run = await engine.execute(program, lm, inputs, config, record, ctx.host, expected,
                                   on_stream)
    except BridgeError as error:
        details = error.details or {}
        breaker.on_failure(retryable_provider_failure=error.type is ErrorType.LM_ERROR
                           and details.get("reason") == "provider_error" and error.retryable)
        raise
    except BaseException:
        breaker.on_abandoned()
        raise
    breaker.on_success()
    session = ctx.sessions.get(program.session_id)
    if session is not None:
        for entry in run.history:
            session.history.add(entry)
    return run


def resolve_lm(call_lm: LmHandle | None, program: ProgramHandle,
               session: Session, default: Any) -> tuple[LmHandle, str]:
    """The call's `lm` > the program's > the session's > the worker default."""
    if call_lm is not None:
        return call_lm, "call"
    if program.lm is not None:
        return program.lm, "program"
    if session.lm is not None:
        return session.lm, "session"
    if default is not None:
        return default, "worker"
    raise BridgeError(
        ErrorType.LM_NOT_CONFIGURED,
        "no LM configured: pass `lm` with the call, create the program with one, or call "
        "configure_lm for this session or for the worker",
        details={"session_id": session.session_id, "program_id": program.program_id},
    )
