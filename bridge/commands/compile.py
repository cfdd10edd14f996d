"""`compile_program`: improve a program with one of DSPy's optimizers against examples.

The optimizer, its options, the examples and the metric are checked before any DSPy
code runs; the run itself goes on in a thread (the engine), sending `progress` events,
and stops with its request. The compiled program replaces the original, or is stored
beside it as `target_program_id`, with the original's type, options and LM.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Annotated, Any

from pydantic import Field

from dspy_bridge.commands.common import (
    check_optional_lm,
    engine_of,
)
from dspy_bridge.commands.evaluate import MAX_EXAMPLES, check_host_metric, split_examples
from dspy_bridge.commands.execute import ProgramCall
from dspy_bridge.commands.programs import insert_program
from dspy_bridge.commands.table import CommandTable, RequestContext
from dspy_bridge.domain.documents import program_document
from dspy_bridge.domain.engine_port import CompileRequest, Engine, ProgramHandle
from dspy_bridge.domain.lm import OptionalLm
from dspy_bridge.domain.models import Args, ProgramId, SessionId
from dspy_bridge.domain.optimizers import check_optimizer
from dspy_bridge.domain.sessions import Session
from dspy_bridge.protocol.errors import BridgeError, ErrorType, invalid_field

table = CommandTable(needs_engine=True)

Examples = Annotated[list[dict[str, Any]], Field(min_length=1, max_length=MAX_EXAMPLES)]


class CheckpointRef(Args):
    id: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.\-]+$")]


class CompileProgramArgs(Args):
    session_id: SessionId | None = None
    program_id: ProgramId
    optimizer: Annotated[str, Field(min_length=1, max_length=100)]
    trainset: Examples
    valset: Examples | None = None
    metric: Annotated[str, Field(min_length=1, max_length=100)] | dict[str, Any]
    options: dict[str, Any] | None = None
    target_program_id: ProgramId | None = None
    checkpoint: CheckpointRef | None = None
    lm: OptionalLm
    # The compiled program's export document in the reply too: a host that records it
    # gets exactly what this compile made, from this worker (an export_program sent
    # after it may reach another worker, if the session moved meanwhile).
    include_document: bool = False


@table.command("compile_program", CompileProgramArgs)
async def compile_program(ctx: RequestContext, args: CompileProgramArgs) -> dict[str, Any]:
    started = time.perf_counter()
    call = ProgramCall.prepare(ctx, args.session_id, args.program_id, args.lm,
                               {"trainset": args.trainset, "valset": args.valset},
                               "the examples' values")
    session, program = call.session, call.program
    target = args.target_program_id or program.program_id
    _check_target_free(session, program, target)
    options = check_optimizer(args.optimizer, args.options, len(args.trainset))
    prompt_config = getattr(options, "prompt_lm", None) or getattr(options, "reflection_lm",
                                                                    None)
    prompt_checked = check_optional_lm(ctx, prompt_config, "options.lm")
    checkpoint_dir = _checkpoint_dir(ctx, session, args.checkpoint)
    outputs = [f.name for f in program.spec.outputs]
    with ctx.sessions.using(session):
        engine = await engine_of(ctx)
        metric = engine.metric(args.metric, outputs[0], outputs)
        check_host_metric(metric, session)
        trainset = _labelled(program, args.trainset, metric.field, "trainset")
        valset = None if args.valset is None else _labelled(program, args.valset,
                                                            metric.field, "valset")
        prompt_lm = None if prompt_checked is None else await engine.lm(prompt_checked,
                                                                        "options.lm.model")
        lm, source = await call.lm(ctx, engine)
        request = CompileRequest(
            args.optimizer, options, trainset, valset, metric,
            [f.name for f in program.spec.inputs], _progress(ctx), prompt_lm,
            checkpoint_dir)
        outcome = await engine.compile(program, lm, request, call.record, ctx.host)
        stored = _store(ctx, engine, session, program, target, outcome.state)
    document = ({"document": program_document(stored, engine.export_state(stored),
                                              engine.dspy_version)}
                if args.include_document else {})
    return {
        **document,
        "program_id": stored.program_id,
        "session_id": session.session_id,
        "optimizer": args.optimizer,
        "score_before": outcome.score_before,
        "score_after": outcome.score_after,
        "metric_calls": outcome.metric_calls,
        "demos": len(stored.demos()),
        "instructions": stored.instructions(),
        "lm": lm.model,
        "lm_source": source,
        "usage": {model: one.to_wire() for model, one in call.usage.items()},
        "duration_ms": round((time.perf_counter() - started) * 1000, 3),
    }


def _check_target_free(session: Session, program: ProgramHandle, target: str) -> None:
    if target != program.program_id and target in session.programs:
        raise BridgeError(
            ErrorType.ALREADY_EXISTS,
            f"session {session.session_id!r} already has a program {target!r}",
            details={"session_id": session.session_id, "program_id": target},
        )


def _labelled(program: ProgramHandle, rows: list[dict[str, Any]], field: str,
              where: str) -> list[dict[str, Any]]:
    """Examples checked as evaluate_program checks its devset (inputs and the metric's
    field), kept whole: their other output values are labels the optimizers use."""
    split_examples(program, rows, field, where)
    return rows


def _checkpoint_dir(ctx: RequestContext, session: Session,
                    checkpoint: CheckpointRef | None) -> str | None:
    """The checkpoint's directory: under the operator's --checkpoint-dir, in a folder of
    the session's own (named by a hash: a session id is tenant data, not a path)."""
    if checkpoint is None:
        return None
    root = ctx.options.checkpoint_dir
    if root is None:
        raise invalid_field("checkpoint", "this worker keeps no checkpoints (start it with "
                            "--checkpoint-dir)")
    tenant = hashlib.sha256(session.session_id.encode()).hexdigest()[:32]
    return str(root / tenant / checkpoint.id)


def _progress(ctx: RequestContext) -> Any:
    """A `report(done, total, score)` the engine may call from any thread: the event goes
    out from the loop."""
    loop = asyncio.get_running_loop()

    def report(done: int, total: int, score: float | None) -> None:
        loop.call_soon_threadsafe(
            lambda: ctx.progress(stage="compile", done=done, total=total, score=score))

    return report


def _store(ctx: RequestContext, engine: Engine, session: Session, program: ProgramHandle,
           target: str, state: dict[str, Any]) -> ProgramHandle:
    """The compiled program, stored under `target` with the original's type, options
    and LM; replacing the original puts it back if the new one cannot be stored."""
    replacing = target == program.program_id
    if replacing:
        ctx.sessions.remove_program(session, program.program_id)
    try:
        insert_program(ctx, engine, session.session_id, target, program.spec,
                       program.program_type, program.lm, [], state, program.options)
    except BridgeError:
        if replacing:
            ctx.sessions.add_program(session, program)
        raise
    compiled: ProgramHandle = session.programs[target]
    return compiled
