"""`execute_batch`: one program over many inputs, each item answered on its own.

Each item runs as `execute_program` would (the same LM precedence, breaker and usage),
at most `max_concurrency` at once. An item that is invalid or fails answers its own
typed error in its place; the batch as a whole fails only for what concerns all of it
(the program, the LM, the request's `timeout_ms` or `cancel`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from pydantic import Field

from dspy_bridge.commands.common import engine_of
from dspy_bridge.commands.execute import CallConfig, ProgramCall, call_program
from dspy_bridge.commands.table import CommandTable, RequestContext
from dspy_bridge.domain.lm import OptionalLm
from dspy_bridge.domain.models import Args, ProgramId, SessionId
from dspy_bridge.domain.signatures import check_inputs
from dspy_bridge.domain.usage import merge_usage
from dspy_bridge.protocol.errors import BridgeError, invalid_field

table = CommandTable(needs_engine=True)

MAX_ITEMS = 10_000


class ExecuteBatchArgs(Args):
    session_id: SessionId | None = None
    program_id: ProgramId
    inputs: Annotated[list[Any], Field(min_length=1, max_length=MAX_ITEMS)]
    max_concurrency: Annotated[int, Field(ge=1, le=256)] = 8
    lm: OptionalLm
    config: CallConfig | None = None


@table.command("execute_batch", ExecuteBatchArgs)
async def execute_batch(ctx: RequestContext, args: ExecuteBatchArgs) -> dict[str, Any]:
    started = time.perf_counter()
    call = ProgramCall.prepare(ctx, args.session_id, args.program_id, args.lm,
                               {"inputs": args.inputs}, "the batch's inputs")
    program = call.program
    config = args.config.model_dump(exclude_none=True) if args.config else {}
    results: list[dict[str, Any]] = [{} for _ in args.inputs]
    with ctx.sessions.using(call.session):
        engine = await engine_of(ctx)
        lm, source = await call.lm(ctx, engine)
        room = asyncio.Semaphore(args.max_concurrency)

        async def one(index: int, inputs: Any) -> None:
            try:
                if not isinstance(inputs, dict):
                    raise invalid_field(f"inputs.{index}", "must be a map of input values")
                check_inputs(program.spec, inputs, f"inputs.{index}")
                async with room:
                    run = await call_program(ctx, engine, program, lm, inputs, config,
                                             call.record)
            except BridgeError as error:
                results[index] = {"error": error.to_wire()}
                return
            results[index] = {"outputs": run.outputs}
            if run.trajectory is not None:
                results[index]["trajectory"] = run.trajectory

        async with asyncio.TaskGroup() as group:
            for index, inputs in enumerate(args.inputs):
                group.create_task(one(index, inputs))
    failed = sum("error" in result for result in results)
    return {
        "results": results,
        "succeeded": len(results) - failed,
        "failed": failed,
        "lm": lm.model,
        "lm_source": source,
        "usage": merge_usage(call.usage).to_wire(),
        "duration_ms": round((time.perf_counter() - started) * 1000, 3),
    }
