"""Metrics for evaluate_program, by name: DSPy's own scoring where DSPy has it.

Adding a metric is one entry in METRICS: its options model and its scoring function,
`(options, predicted, expected) -> float in [0, 1]`. `expected` may be a list of
acceptable answers (the best score counts), as DSPy's `answer_exact_match` allows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from dspy.evaluate.metrics import em_score, f1_score, normalize_text
from pydantic import Field, ValidationError

from dspy_bridge.domain.models import Args, FunctionName, invalid_from
from dspy_bridge.protocol.errors import invalid_field

FieldName = Annotated[str, Field(min_length=1, max_length=200)]


class TextMetric(Args):
    name: str
    field: FieldName | None = None  # default: the program's first output field
    threshold: Annotated[float, Field(ge=0, le=1)] = 1.0


class F1Metric(TextMetric):
    threshold: Annotated[float, Field(ge=0, le=1)] = 0.5


class HostMetric(Args):
    """Scored by a host function (a `metric` callback), declared in the session."""

    name: str
    function: FunctionName
    field: FieldName | None = None
    threshold: Annotated[float, Field(ge=0, le=1)] = 1.0


class JsonFieldMetric(Args):
    name: str
    field: FieldName | None = None
    # a dotted path into the output's value (`a.b.0`); empty: the whole value
    path: Annotated[str, Field(max_length=1_000)] = ""
    threshold: Annotated[float, Field(ge=0, le=1)] = 1.0


def _text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def _exact_match(_: Any, predicted: Any, expected: Any) -> float:
    return float(em_score(_text(predicted), _text(expected)))


def _contains(_: Any, predicted: Any, expected: Any) -> float:
    return float(normalize_text(_text(expected)) in normalize_text(_text(predicted)))


def _f1(_: Any, predicted: Any, expected: Any) -> float:
    return float(f1_score(_text(predicted), _text(expected)))


def _host_scored(_: Any, predicted: Any, expected: Any) -> float:
    raise RuntimeError("a host metric is scored by a callback, not here")


_MISSING = object()


def _at(value: Any, path: str) -> Any:
    for step in path.split(".") if path else ():
        if isinstance(value, dict):
            value = value.get(step, _MISSING)
        elif isinstance(value, list) and step.isdigit() and int(step) < len(value):
            value = value[int(step)]
        else:
            return _MISSING
    return value


def _json_field(options: JsonFieldMetric, predicted: Any, expected: Any) -> float:
    found = _at(predicted, options.path)
    return float(found is not _MISSING and found == _at(expected, options.path))


@dataclass(frozen=True, slots=True)
class MetricKind:
    options: type[Args]
    score: Callable[[Any, Any, Any], float]
    # whether `expected` may list acceptable answers (a list then is not one value)
    alternatives: bool = True


METRICS: dict[str, MetricKind] = {
    "exact_match": MetricKind(TextMetric, _exact_match),
    "contains": MetricKind(TextMetric, _contains),
    "f1": MetricKind(F1Metric, _f1),
    "json_field": MetricKind(JsonFieldMetric, _json_field, alternatives=False),
    # scored by the host, asynchronously: evaluate_program calls it (see `function`)
    "host": MetricKind(HostMetric, _host_scored, alternatives=False),
}


@dataclass(frozen=True, slots=True)
class Metric:
    name: str
    field: str
    threshold: float
    _kind: MetricKind
    _options: Any

    @property
    def function(self) -> str | None:
        """The host function that scores, for a host metric."""
        return getattr(self._options, "function", None)

    def score(self, predicted: Any, expected: Any) -> float:
        if self._kind.alternatives and isinstance(expected, list):
            return max((self._kind.score(self._options, predicted, one) for one in expected),
                       default=0.0)
        return self._kind.score(self._options, predicted, expected)


def check_metric(spec: str | dict[str, Any], default_field: str, outputs: list[str],
                 where: str = "metric") -> Metric:
    """The metric `spec` names (a name, or `{name, ...options}`), checked; errors name
    `<where>.<option>`."""
    given = {"name": spec} if isinstance(spec, str) else dict(spec)
    name = given.get("name")
    kind = METRICS.get(name) if isinstance(name, str) else None
    if kind is None:
        raise invalid_field(f"{where}.name", f"unknown metric {name!r}; known: "
                            + ", ".join(METRICS))
    try:
        options: Any = kind.options.model_validate(given)
    except ValidationError as exc:
        raise invalid_from(exc, where) from None
    field = options.field or default_field
    if field not in outputs:
        raise invalid_field(f"{where}.field", f"{field!r} is not an output field of the "
                            "program; its outputs are " + ", ".join(outputs))
    return Metric(options.name, field, options.threshold, kind, options)
