"""One compile, in its thread: the examples, the score before and after, the optimizer's
run, and the checkpoint that lets a re-run after a crash skip the LM calls already made.

A checkpoint keeps every LM answer of the run on disk (`CallScope.checkpoint`, read and
written by the bridge's cache): the optimizers are deterministic given their seeds and
answers, so a re-run asks the same questions in the same order and finds the answers
the crashed run already paid for; GEPA also gets a run directory of its own there. It
needs an LM whose answers may be cached (not a mock answering by call order).
"""

from __future__ import annotations

import os
from typing import Any

import diskcache
import dspy

from dspy_bridge.domain.engine_port import CompileOutcome, CompileRequest
from dspy_bridge.domain.progress import ProgressCounter
from dspy_bridge.engine.optimizers import (
    OPTIMIZERS,
    CompileJob,
    dspy_metric,
    estimated_metric_calls,
    stoppable,
)
from dspy_bridge.engine.programs import ProgramHandle, to_wire
from dspy_bridge.engine.scope import SCOPE_SETTING, CallScope
from dspy_bridge.engine.types import dspy_values

CHECKPOINT_LM_DIR = "lm-answers"
CHECKPOINT_GEPA_DIR = "gepa"


def open_checkpoint(directory: str | None) -> diskcache.Cache | None:
    return None if directory is None else diskcache.Cache(
        os.path.join(directory, CHECKPOINT_LM_DIR))


def run_compile(program: ProgramHandle, lm: Any, request: CompileRequest,
                scope: CallScope) -> CompileOutcome:
    def examples(rows: list[dict[str, Any]]) -> list[Any]:
        return [dspy.Example(**dspy_values(program.spec, row)).with_inputs(*request.input_names)
                for row in rows]

    train = examples(request.trainset)
    val = examples(request.valset) if request.valset else None
    options = request.options
    threads = int(getattr(options, "num_threads", 1))
    estimate = estimated_metric_calls(request.optimizer, options, len(train),
                                      len(val or train)) + 2 * len(val or [])
    progress = ProgressCounter(estimate, request.report, estimated=True)
    metric = dspy_metric(request.metric, progress)  # type: ignore[arg-type]
    prompt_lm = None if request.prompt_lm is None else stoppable(
        request.prompt_lm.lm, lm._bridge_stop)  # type: ignore[attr-defined]
    log_dir = None if request.checkpoint_dir is None else os.path.join(
        request.checkpoint_dir, CHECKPOINT_GEPA_DIR)
    # DSPy's traces stay on (execute turns them off): the optimizers learn from them.
    with dspy.context(lm=lm, adapter=None, track_usage=False, max_history_size=0,
                      **{SCOPE_SETTING: scope}):
        student = program.module.deepcopy()
        before = _score(student, val, metric, threads)
        job = CompileJob(student, train, val, metric, options, prompt_lm, log_dir)
        compiled = OPTIMIZERS[request.optimizer](job)
        after = _score(compiled, val, metric, threads)
    progress.finish(after)
    return CompileOutcome(compiled_state(compiled), before, after, progress.done)


def compiled_state(compiled: Any) -> dict[str, Any]:
    """The compiled program's state, each demo kept to its predictor's own fields: an
    optimizer gives every predictor the same examples (LabeledFewShot does), whose other
    fields that predictor never reads."""
    for _, predictor in compiled.named_predictors():
        names = {*predictor.signature.fields, "augmented"}
        demos = []
        for demo in predictor.demos:
            kept = {key: value for key, value in dict(demo).items() if key in names}
            if set(kept) - {"augmented"}:
                demos.append(dspy.Example(**kept))
        predictor.demos = demos
    return to_wire(compiled.dump_state())  # type: ignore[no-any-return]


def _score(module: Any, devset: list[Any] | None, metric: Any, threads: int) -> float | None:
    """The mean metric over `devset` (DSPy's Evaluate answers a percentage)."""
    if not devset:
        return None
    result = dspy.Evaluate(devset=devset, metric=metric, num_threads=threads,
                           display_progress=False, provide_traceback=False)(module)
    return round(float(result.score) / 100, 6)
