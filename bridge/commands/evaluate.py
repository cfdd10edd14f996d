"""`evaluate_program`: run a program over a devset and score it with a named metric.

Each example runs as `execute_program` would (the same LM precedence and breaker), at
most `max_concurrency` at once, each under `example_timeout_ms`. An example that fails
or runs out of time scores 0 with its error reported; it never fails the evaluation.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from pydantic import Field

from dspy_bridge.commands.common import engine_of
from dspy_bridge.commands.execute import ProgramCall, call_program
from dspy_bridge.commands.table import CommandTable, RequestContext
from dspy_bridge.domain.engine_port import Engine, LmHandle, MetricHandle, ProgramHandle
from dspy_bridge.domain.host import HostCaller, HostCallFailed, Purpose, unit_score
from dspy_bridge.domain.lm import OptionalLm
from dspy_bridge.domain.models import Args, ProgramId, SessionId
from dspy_bridge.domain.progress import ProgressCounter
from dspy_bridge.domain.sessions import Session
from dspy_bridge.domain.signatures import check_inputs
from dspy_bridge.domain.usage import merge_usage
from dspy_bridge.protocol.errors import BridgeError, ErrorType, invalid_field, invalid_fields

table = CommandTable(needs_engine=True)

MAX_EXAMPLES = 10_000
MAX_FAILED_REPORTED = 100


class EvaluateProgramArgs(Args):
    session_id: SessionId | None = None
    program_id: ProgramId
    # each example: the program's input field values and the expected output values
    devset: Annotated[list[dict[str, Any]], Field(min_length=1, max_length=MAX_EXAMPLES)]
    metric: Annotated[str, Field(min_length=1, max_length=100)] | dict[str, Any]
    max_concurrency: Annotated[int, Field(ge=1, le=256)] = 8
    example_timeout_ms: Annotated[int, Field(gt=0)] | None = None
    lm: OptionalLm
    per_example: bool = False


def split_examples(
    program: ProgramHandle, devset: list[dict[str, Any]], field: str, where: str = "devset"
) -> list[tuple[dict[str, Any], Any]]:
    """Each example's inputs (checked as execute_program checks them) and expected value;
    errors name `<where>.<index>.<field>`."""
    input_names = {f.name for f in program.spec.inputs}
    known = input_names | {f.name for f in program.spec.outputs}
    examples, errors = [], []
    for index, example in enumerate(devset):
        inputs = {name: value for name, value in example.items() if name in input_names}
        extra = [name for name in example if name not in known]
        errors += [(f"{where}.{index}.{name}", "not a field of the program's signature")
                   for name in extra]
        if field not in example:
            errors.append((f"{where}.{index}.{field}", "missing: the metric compares it"))
        try:
            check_inputs(program.spec, inputs, f"{where}.{index}")
        except BridgeError as error:
            errors += [(e["field"], e["message"]) for e in (error.details or {})["errors"]]
        examples.append((inputs, example.get(field)))
    if errors:
        raise invalid_fields(errors)
    return examples


class Evaluation:
    """The examples' outcomes as they come in, and the progress events they earn."""

    def __init__(self, ctx: RequestContext, total: int) -> None:
        self.results: list[dict[str, Any] | None] = [None] * total

        def report(done: int, total: int, score: float | None) -> None:
            ctx.progress(stage="evaluate", done=done, total=total, score=score)

        self.progress = ProgressCounter(total, report)

    def add(self, index: int, result: dict[str, Any]) -> None:
        self.results[index] = result
        self.progress.tick(result["score"])


async def _run_example(
    ctx: RequestContext, engine: Engine, program: ProgramHandle, lm: LmHandle,
    metric: MetricHandle, inputs: dict[str, Any], expected: Any, timeout_ms: int | None,
    record: Any,
) -> dict[str, Any]:
    try:
        async with asyncio.timeout(None if timeout_ms is None else timeout_ms / 1000):
            outputs = (await call_program(ctx, engine, program, lm, inputs, {}, record)).outputs
    except TimeoutError:
        error = BridgeError(ErrorType.TIMEOUT, f"the example did not finish within {timeout_ms} ms",
                            details={"timeout_ms": timeout_ms})
        return {"score": 0.0, "passed": False, "error": error.to_wire()}
    except BridgeError as error:
        return {"score": 0.0, "passed": False, "error": error.to_wire()}
    if metric.function is None:
        score = metric.score(outputs.get(metric.field), expected)
    else:
        try:
            score = float(await host_of(ctx).call(metric.function, Purpose.METRIC, {
                "field": metric.field, "inputs": inputs, "outputs": outputs,
                "expected": expected}, unit_score))
        except HostCallFailed as failure:
            return {"score": 0.0, "passed": False, "outputs": outputs,
                    "error": failure.to_error().to_wire()}
    return {"score": score, "passed": score >= metric.threshold, "outputs": outputs}


def check_host_metric(metric: MetricHandle, session: Session) -> None:
    if metric.function is not None and metric.function not in session.tools:
        raise invalid_field("metric.function", f"no host function {metric.function!r} "
                            "is declared in the session (register_tools)")


def host_of(ctx: RequestContext) -> HostCaller:
    assert ctx.host is not None, "DSPy commands always get a HostCaller"
    return ctx.host


@table.command("evaluate_program", EvaluateProgramArgs)
async def evaluate_program(ctx: RequestContext, args: EvaluateProgramArgs) -> dict[str, Any]:
    started = time.perf_counter()
    call = ProgramCall.prepare(ctx, args.session_id, args.program_id, args.lm,
                               {"devset": args.devset}, "the devset's values")
    program, record = call.program, call.record
    outputs = [f.name for f in program.spec.outputs]
    with ctx.sessions.using(call.session):
        engine = await engine_of(ctx)
        metric = engine.metric(args.metric, outputs[0], outputs)
        check_host_metric(metric, call.session)
        examples = split_examples(program, args.devset, metric.field)
        lm, source = await call.lm(ctx, engine)
        evaluation = Evaluation(ctx, len(examples))
        room = asyncio.Semaphore(args.max_concurrency)

        async def one(index: int, inputs: dict[str, Any], expected: Any) -> None:
            async with room:
                result = await _run_example(ctx, engine, program, lm, metric, inputs, expected,
                                            args.example_timeout_ms, record)
            evaluation.add(index, result)

        async with asyncio.TaskGroup() as group:
            for index, (inputs, expected) in enumerate(examples):
                group.create_task(one(index, inputs, expected))
    results = [dict(result, index=index) for index, result in enumerate(evaluation.results)
               if result is not None]
    failed = [result for result in results if not result["passed"]]
    reply: dict[str, Any] = {
        "score": round(evaluation.progress.mean, 6),
        "total": len(results),
        "passed": len(results) - len(failed),
        "failed_examples": failed[:MAX_FAILED_REPORTED],
        "metric": {"name": metric.name, "field": metric.field, "threshold": metric.threshold},
        "lm": lm.model,
        "lm_source": source,
        "usage": merge_usage(call.usage).to_wire(),
        "duration_ms": round((time.perf_counter() - started) * 1000, 3),
    }
    if args.per_example:
        reply["per_example"] = results
    return reply
