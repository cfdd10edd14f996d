"""compile_program on DSPy: its optimizers (teleprompters) built from checked options,
run in a thread under the request's LM and call scope, stoppable, with progress.

A compile is synchronous DSPy code (the optimizers call programs and run `Evaluate` in
pool threads), so it runs in a thread; the request's `CallScope` rides DSPy's settings
into every thread DSPy starts (`scope`). Cancelling the request sets its stop event,
and the next LM call of the run raises `CallStopped`, which no optimizer catches (a
`BaseException`), so the thread ends instead of spending LM calls nobody waits for.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dspy
import structlog

from dspy_bridge.domain.host import HostCallFailed, Purpose, unit_score
from dspy_bridge.domain.optimizers import (
    BootstrapFewShotOptions,
    GepaOptions,
    LabeledFewShotOptions,
    MiproOptions,
    RandomSearchOptions,
    SimbaOptions,
)
from dspy_bridge.domain.progress import ProgressCounter
from dspy_bridge.engine.metrics import Metric
from dspy_bridge.engine.programs import to_wire
from dspy_bridge.engine.tools import current_host, noted
from dspy_bridge.protocol.errors import invalid_field


class CallStopped(BaseException):
    """The request whose thread this is was cancelled or timed out, or the worker is
    shutting down: the thread's work ends at its next LM call."""


# ----- LMs that stop with their request -----


@functools.cache
def _stoppable_class(base: Any) -> Any:
    class Stoppable(base):  # type: ignore[misc]
        """The LM of one compile: every call first checks the compile's stop event.
        `lm.copy()` (BootstrapFewShot, BestOfN) keeps the class and the event."""

        _bridge_stop: threading.Event

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            if self._bridge_stop.is_set():
                raise CallStopped()
            return super().__call__(*args, **kwargs)

        async def acall(self, *args: Any, **kwargs: Any) -> Any:
            if self._bridge_stop.is_set():
                raise CallStopped()
            return await super().acall(*args, **kwargs)

    Stoppable.__name__ = Stoppable.__qualname__ = f"Stoppable{base.__name__}"
    return Stoppable


def stopped_quietly(work: Callable[..., Any]) -> Callable[..., Any]:
    """`work` for a thread that a stopped request may leave: it logs `thread_stopped`
    (with the request's id, from the thread's copied context) when it ends that way."""

    @functools.wraps(work)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return work(*args, **kwargs)
        except CallStopped:
            structlog.get_logger("bridge.engine").info("thread_stopped")
            raise

    return run


def stoppable(lm: Any, stop: threading.Event) -> Any:
    copy = lm.copy()
    base: Any = type(lm)
    copy.__class__ = _stoppable_class(base)
    copy._bridge_stop = stop
    return copy


# ----- metrics as DSPy calls them -----


def dspy_metric(metric: Metric, progress: ProgressCounter) -> Callable[..., Any]:
    """The metric as DSPy's optimizers call it: `(example, prediction, trace=None)`, and
    GEPA's `(gold, pred, trace, pred_name, pred_trace)`, which wants feedback text too."""

    def score(example: Any, prediction: Any, trace: Any = None, pred_name: Any = None,
              pred_trace: Any = None) -> Any:
        expected = example.get(metric.field)
        predicted = None if prediction is None else prediction.get(metric.field)
        if metric.function is None:
            value = metric.score(predicted, expected)
        else:
            inputs = {name: to_wire(example.get(name)) for name in example.inputs().keys()}
            outputs = {} if prediction is None else {
                name: to_wire(prediction.get(name)) for name in prediction.keys()}
            try:
                value = float(current_host().call_blocking(metric.function, Purpose.METRIC, {
                    "field": metric.field, "inputs": inputs, "outputs": outputs,
                    "expected": to_wire(expected)}, unit_score))
            except HostCallFailed as failure:
                raise noted(failure) from None
        progress.tick(value)
        if pred_name is not None:  # GEPA: a score and what to learn from it
            feedback = (f"The {metric.field} was right." if value >= metric.threshold else
                        f"Expected {metric.field} {expected!r}, got {predicted!r}.")
            return dspy.Prediction(score=value, feedback=feedback)
        if trace is not None:  # bootstrapping: whether the trace makes a good demo
            return value >= metric.threshold
        return value

    return score


# ----- the optimizers -----


@dataclass(frozen=True, slots=True)
class CompileJob:
    """One compile's inputs, DSPy objects already built."""

    student: Any
    trainset: list[Any]
    valset: list[Any] | None
    metric: Callable[..., Any]
    options: Any
    prompt_lm: Any = None  # MIPROv2's proposer, GEPA's reflection LM
    log_dir: str | None = None  # GEPA's run directory (its own checkpoint)


def _labeled(job: CompileJob) -> Any:
    options: LabeledFewShotOptions = job.options
    return dspy.LabeledFewShot(k=options.k).compile(job.student, trainset=job.trainset)


def _bootstrap_kwargs(options: BootstrapFewShotOptions) -> dict[str, Any]:
    return {"max_bootstrapped_demos": options.max_bootstrapped_demos,
            "max_labeled_demos": options.max_labeled_demos,
            "max_rounds": options.max_rounds, "max_errors": options.max_errors}


def _bootstrap(job: CompileJob) -> Any:
    optimizer = dspy.BootstrapFewShot(metric=job.metric, **_bootstrap_kwargs(job.options))
    return optimizer.compile(job.student, trainset=job.trainset)


def _random_search(job: CompileJob) -> Any:
    options: RandomSearchOptions = job.options
    optimizer = dspy.BootstrapFewShotWithRandomSearch(
        metric=job.metric, num_candidate_programs=options.num_candidate_programs,
        num_threads=options.num_threads, stop_at_score=options.stop_at_score,
        **_bootstrap_kwargs(options))
    return optimizer.compile(job.student, trainset=job.trainset, valset=job.valset)


def _simba(job: CompileJob) -> Any:
    options: SimbaOptions = job.options
    optimizer = dspy.SIMBA(metric=job.metric, bsize=options.bsize,
                           num_candidates=options.num_candidates, max_steps=options.max_steps,
                           max_demos=options.max_demos, num_threads=options.num_threads)
    return optimizer.compile(job.student, trainset=job.trainset, seed=options.seed)


def _mipro(job: CompileJob) -> Any:
    options: MiproOptions = job.options
    try:
        import optuna  # noqa: F401 - MIPROv2's search needs it
    except ImportError:
        raise invalid_field("optimizer", "mipro_v2 needs the optuna package in the worker's "
                            "environment: pip install 'dspy-bridge[mipro]'") from None
    optimizer = dspy.MIPROv2(metric=job.metric, auto=options.auto, prompt_model=job.prompt_lm,
                             max_bootstrapped_demos=options.max_bootstrapped_demos,
                             max_labeled_demos=options.max_labeled_demos,
                             num_threads=options.num_threads, seed=options.seed, verbose=False)
    return optimizer.compile(job.student, trainset=job.trainset, valset=job.valset,
                             seed=options.seed)


def _gepa(job: CompileJob) -> Any:
    options: GepaOptions = job.options
    budget = ({"max_metric_calls": options.max_metric_calls}
              if options.max_metric_calls is not None else {"auto": options.auto})
    optimizer = dspy.GEPA(metric=job.metric, reflection_lm=job.prompt_lm,
                          num_threads=options.num_threads, seed=options.seed,
                          log_dir=job.log_dir, **budget)
    return optimizer.compile(job.student, trainset=job.trainset, valset=job.valset)


# Adding an optimizer is an entry here (and its options in domain/optimizers).
OPTIMIZERS: dict[str, Callable[[CompileJob], Any]] = {
    "labeled_few_shot": _labeled,
    "bootstrap_few_shot": _bootstrap,
    "bootstrap_few_shot_with_random_search": _random_search,
    "simba": _simba,
    "mipro_v2": _mipro,
    "gepa": _gepa,
}


def estimated_metric_calls(name: str, options: Any, train: int, val: int) -> int:
    """Roughly how many metric evaluations a run makes (progress's `total`)."""
    if name == "bootstrap_few_shot":
        return int(train * options.max_rounds)
    if name == "bootstrap_few_shot_with_random_search":
        return int((options.num_candidate_programs + 3) * val
                   + (options.num_candidate_programs + 1) * train)
    if name == "simba":
        return int(options.max_steps * options.bsize * (options.num_candidates + 1))
    if name == "gepa" and options.max_metric_calls is not None:
        return int(options.max_metric_calls)
    if name in {"mipro_v2", "gepa"}:
        return 10 * (train + val)
    return 0
