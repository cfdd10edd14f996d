"""Program-type options (`create_program`'s `options`), checked without DSPy: what each
program type takes, and that the host functions it names are declared in the session."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, model_validator

from dspy_bridge.domain.host import HostFunction
from dspy_bridge.domain.models import Args, FunctionName, invalid_from
from dspy_bridge.protocol.errors import invalid_field


class NoOptions(Args):
    pass


class ReactOptions(Args):
    tools: Annotated[list[FunctionName], Field(min_length=1, max_length=32)]
    max_iters: Annotated[int, Field(ge=1, le=100)] = 20


class RewardSpec(Args):
    """A built-in metric against `expected` (the spec's, else the call's), or a host
    function that scores each attempt."""

    metric: Annotated[str, Field(min_length=1, max_length=100)] | dict[str, Any] | None = None
    # the output field scored (short for the metric's own `field`)
    field: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    expected: Any = None
    function: FunctionName | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> RewardSpec:
        if (self.metric is None) == (self.function is None):
            raise ValueError("give exactly one of metric and function")
        if self.function is not None and self.model_fields_set & {"expected", "field"}:
            raise ValueError("expected and field go with a metric, not a host function")
        return self

    def to_wire(self) -> dict[str, Any]:
        """The spec with `field` folded into the metric's own options."""
        wire = self.model_dump(include=self.model_fields_set - {"field"}, exclude_none=False)
        if self.field is not None:
            metric = self.metric
            wire["metric"] = {**({"name": metric} if isinstance(metric, str) else
                                 dict(metric or {})), "field": self.field}
        return wire


class AttemptsOptions(Args):
    module: Literal["predict", "chain_of_thought"] = "predict"
    n: Annotated[int, Field(ge=1, le=20)] = 3
    threshold: float = 1.0
    reward: RewardSpec
    fail_count: Annotated[int, Field(ge=1, le=20)] | None = None


class CustomOptions(Args):
    """An operator's module class (`module:Class`): its constructor's keyword arguments."""

    init: dict[str, Any] = Field(default_factory=dict)


class CompareOptions(Args):
    m: Annotated[int, Field(ge=2, le=10)] = 3


OPTIONS: dict[str, type[Args]] = {
    "predict": NoOptions,
    "chain_of_thought": NoOptions,
    "react": ReactOptions,
    "best_of_n": AttemptsOptions,
    "refine": AttemptsOptions,
    "multi_chain_comparison": CompareOptions,
}


def check_options(type_name: str, raw: dict[str, Any] | None,
                  declared: Mapping[str, HostFunction], field: str = "options") -> dict[str, Any]:
    """The options of a program of this type, checked and in their wire form; every host
    function they name must be declared in `declared` (the session's)."""
    model = CustomOptions if ":" in type_name else OPTIONS[type_name]
    try:
        options = model.model_validate(raw or {})
    except ValidationError as exc:
        raise invalid_from(exc, field) from None
    if isinstance(options, ReactOptions):
        for index, name in enumerate(options.tools):
            _require_declared(name, declared, f"{field}.tools.{index}")
        if len(set(options.tools)) != len(options.tools):
            raise invalid_field(f"{field}.tools", "names a host function twice")
        return {"tools": list(options.tools), "max_iters": options.max_iters}
    if isinstance(options, AttemptsOptions):
        if options.reward.function is not None:
            _require_declared(options.reward.function, declared, f"{field}.reward.function")
        wire = {"module": options.module, "n": options.n, "threshold": options.threshold,
                "reward": options.reward.to_wire()}
        if options.fail_count is not None:
            wire["fail_count"] = options.fail_count
        return wire
    if isinstance(options, CompareOptions):
        return {"m": options.m}
    if isinstance(options, CustomOptions):
        return {"init": dict(options.init)}
    return {}


def _require_declared(name: str, declared: Mapping[str, HostFunction], field: str) -> None:
    if name not in declared:
        raise invalid_field(field, f"no host function {name!r} is declared in the session "
                            "(register_tools)")


def host_functions_of(type_name: str, options: dict[str, Any]) -> list[str]:
    """The host functions a program of this type and options calls."""
    if type_name == "react":
        return list(options["tools"])
    reward = options.get("reward", {})
    return [reward["function"]] if "function" in reward else []
