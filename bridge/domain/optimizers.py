"""compile_program's optimizers as data: each name with its options, checked without
DSPy. Adding an optimizer is an entry here and its builder in `bridge.engine.optimizers`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError

from dspy_bridge.domain.lm import LmConfig
from dspy_bridge.domain.models import Args, invalid_from
from dspy_bridge.protocol.errors import invalid_field

Threads = Annotated[int, Field(ge=1, le=32)]
Demos = Annotated[int, Field(ge=0, le=100)]
Auto = Literal["light", "medium", "heavy"]


class LabeledFewShotOptions(Args):
    k: Annotated[int, Field(ge=1, le=100)] = 16


class BootstrapFewShotOptions(Args):
    max_bootstrapped_demos: Demos = 4
    max_labeled_demos: Demos = 16
    max_rounds: Annotated[int, Field(ge=1, le=10)] = 1
    max_errors: Annotated[int, Field(ge=0)] | None = None


class RandomSearchOptions(BootstrapFewShotOptions):
    num_candidate_programs: Annotated[int, Field(ge=1, le=64)] = 8
    num_threads: Threads = 4
    stop_at_score: Annotated[float, Field(ge=0, le=1)] | None = None


class SimbaOptions(Args):
    bsize: Annotated[int, Field(ge=1, le=256)] = 8
    num_candidates: Annotated[int, Field(ge=2, le=32)] = 4
    max_steps: Annotated[int, Field(ge=1, le=100)] = 4
    max_demos: Annotated[int, Field(ge=0, le=20)] = 4
    num_threads: Threads = 4
    seed: Annotated[int, Field(ge=0)] = 0


class MiproOptions(Args):
    auto: Auto = "light"
    max_bootstrapped_demos: Demos = 4
    max_labeled_demos: Demos = 4
    num_threads: Threads = 4
    seed: Annotated[int, Field(ge=0)] = 9
    # the LM that proposes instructions (default: the program's LM)
    prompt_lm: LmConfig | None = None


class GepaOptions(Args):
    auto: Auto | None = "light"
    max_metric_calls: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    # the LM that reflects on the traces and rewrites instructions (required by GEPA)
    reflection_lm: LmConfig
    num_threads: Threads = 4
    seed: Annotated[int, Field(ge=0)] = 0


OPTIMIZERS: dict[str, type[Args]] = {
    "labeled_few_shot": LabeledFewShotOptions,
    "bootstrap_few_shot": BootstrapFewShotOptions,
    "bootstrap_few_shot_with_random_search": RandomSearchOptions,
    "simba": SimbaOptions,
    "mipro_v2": MiproOptions,
    "gepa": GepaOptions,
}


def check_optimizer(name: str, raw: dict[str, Any] | None, trainset_size: int) -> Args:
    """The options of optimizer `name` for a trainset of this size, checked; errors name
    `optimizer` or `options.<option>`."""
    model = OPTIMIZERS.get(name)
    if model is None:
        raise invalid_field("optimizer", f"unknown optimizer {name[:100]!r}; known: "
                            + ", ".join(OPTIMIZERS))
    try:
        options = model.model_validate(raw or {})
    except ValidationError as exc:
        raise invalid_from(exc, "options") from None
    if isinstance(options, SimbaOptions) and options.bsize > trainset_size:
        raise invalid_field("options.bsize", f"is larger than the trainset ({trainset_size} "
                            "examples)")
    if isinstance(options, GepaOptions):
        auto_given = "auto" in options.model_fields_set and options.auto is not None
        if auto_given and options.max_metric_calls is not None:
            raise invalid_field("options.auto", "give auto or max_metric_calls, not both")
        if options.auto is None and options.max_metric_calls is None:
            raise invalid_field("options.max_metric_calls",
                                "give auto or max_metric_calls (GEPA's budget)")
    return options
