"""Host functions inside DSPy: ReAct tools that forward to the host, rewards for BestOfN
and Refine, and the checks on a declared function's JSON schema.

A tool or reward reaches the host through the calling request's `HostCaller`, found in
the call's `CallScope` (a contextvar, so it follows DSPy into threads): the program is
built once and shared by every request, the host caller is the request's own.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import dspy
import jsonschema

from dspy_bridge.domain.host import (
    HostCaller,
    HostCallFailed,
    HostFunction,
    Purpose,
    finite_number,
)
from dspy_bridge.engine.metrics import check_metric
from dspy_bridge.engine.scope import current_scope
from dspy_bridge.protocol.errors import invalid_field

# Keywords whose values jsonschema would evaluate as regular expressions: a tenant's
# pattern could backtrack for minutes on the event loop, so none is accepted.
REGEX_KEYWORDS = frozenset({"pattern", "patternProperties"})


# ----- declared schemas -----


def check_parameters(schema: dict[str, Any], field: str) -> None:
    """A declared `parameters` schema: an object schema, valid as JSON schema, with only
    local `$ref`s (nothing is ever fetched) and no regular expressions."""
    if schema.get("type") != "object":
        raise invalid_field(field, 'must be an object schema ({"type": "object", ...})')
    problem = _unsafe_keyword(schema)
    if problem is not None:
        raise invalid_field(field, problem)
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise invalid_field(field, f"is not a valid JSON schema: {exc.message[:300]}") from None


def _unsafe_keyword(value: Any) -> str | None:
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            for key, inner in item.items():
                if key in REGEX_KEYWORDS:
                    return f"{key!r} is not accepted (regular expressions are not evaluated)"
                if key == "$ref" and not (isinstance(inner, str) and inner.startswith("#")):
                    return "only local $ref values (starting with '#') are accepted"
                pending.append(inner)
        elif isinstance(item, list):
            pending.extend(item)
    return None


def argument_problem(schema: dict[str, Any], arguments: dict[str, Any]) -> str | None:
    """Why the LM's arguments do not fit the declared schema, or None."""
    validator = jsonschema.validators.validator_for(schema)(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(arguments))
    if error is None:
        return None
    where = "/".join(str(part) for part in error.absolute_path)
    return f"invalid arguments{f' at {where}' if where else ''}: {error.message[:300]}"


# ----- ReAct tools -----


def failure_observation(name: str, message: str) -> str:
    """What the LM sees of a failed tool: DSPy's own wording for a tool's exception, but
    without the traceback ReAct would add (the worker's frames, not the host's problem)."""
    return f"Execution error in {name}: {message}"


class Observation(str):
    """A tool's structured result as the LM reads it (JSON text), keeping the value for
    the trajectory the host gets back. DSPy formats a list observation as a list of text
    blobs and fails on any other item (`[1, 2]`), so no result reaches it as a list
    (tests/test_engine_fixes.py fails when DSPy changes this)."""

    value: Any

    def __new__(cls, value: Any) -> Observation:
        text = super().__new__(cls, json.dumps(value, ensure_ascii=False, default=repr))
        text.value = value
        return text


def observed(result: Any) -> Any:
    return result if isinstance(result, str) else Observation(result)


class HostTool(dspy.Tool):  # type: ignore[misc]
    """A tool whose arguments the host function's own check validates, as one object
    against the declared schema: DSPy's per-argument check would raise first, and ReAct
    would show the LM a traceback of the worker's frames (tests/test_engine_fixes.py
    checks DSPy still validates through this method)."""

    def _validate_and_parse_args(self, **kwargs: Any) -> dict[str, Any]:
        return kwargs


def host_tool(function: HostFunction) -> dspy.Tool:
    """A dspy.Tool that runs the host function of that name for the calling request."""

    async def run(**arguments: Any) -> Any:
        problem = argument_problem(function.parameters, arguments)
        if problem is not None:
            return failure_observation(function.name, problem)
        try:
            return observed(await current_host().call(function.name, Purpose.TOOL, arguments))
        except HostCallFailed as failure:
            return failure_observation(function.name, failure.message)

    properties = function.parameters.get("properties", {})
    return HostTool(run, name=function.name, desc=function.description or None,
                     args=dict(properties), arg_types=dict.fromkeys(properties, Any))


def current_host() -> HostCaller:
    scope = current_scope()
    if scope is None or scope.host is None:
        raise RuntimeError("a host function was called outside a request")
    return scope.host


def noted(failure: HostCallFailed) -> HostCallFailed:
    """Keep the call's first failed reward or generator in its scope (the call fails with
    it even if DSPy carries on), and hand it back to be raised."""
    scope = current_scope()
    if scope is not None and scope.host_failure is None:
        scope.host_failure = failure
        scope.stop.set()  # the call is failed: its next LM call ends the thread's work
    return failure


def steps_of(trajectory: dict[str, Any]) -> list[dict[str, Any]]:
    """ReAct's flat trajectory (`thought_0`, `tool_name_0`, ...) as a list of steps."""
    steps, index = [], 0
    while f"tool_name_{index}" in trajectory:
        step = {part: trajectory.get(f"{part}_{index}")
                for part in ("thought", "tool_name", "tool_args", "observation")}
        if isinstance(step["observation"], Observation):
            step["observation"] = step["observation"].value
        steps.append(step)
        index += 1
    return steps


# ----- rewards -----


def reward_function(reward: dict[str, Any], outputs: list[str],
                    to_wire: Callable[[Any], Any]) -> Callable[[dict[str, Any], Any], float]:
    """BestOfN's `reward_fn(inputs, prediction)` for a checked reward spec: a built-in
    metric against `expected` (the spec's, else the call's), or a host function."""
    if "function" in reward:
        name = reward["function"]

        def host_reward(inputs: dict[str, Any], prediction: Any) -> float:
            args = {"inputs": to_wire(inputs),
                    "outputs": {field: to_wire(prediction.get(field)) for field in outputs}}
            try:
                score = current_host().call_blocking(name, Purpose.REWARD, args, finite_number)
            except HostCallFailed as failure:
                raise noted(failure) from None
            return float(score)

        return host_reward
    metric = check_metric(reward["metric"], _default_field(outputs), outputs,
                          "options.reward.metric")
    if metric.function is not None:
        raise invalid_field("options.reward.metric", "a host function scores as "
                            "{function: name}, not as a metric")
    constant = "expected" in reward

    def metric_reward(inputs: dict[str, Any], prediction: Any) -> float:
        scope = current_scope()
        expected = reward["expected"] if constant else (scope.expected if scope else {}).get(
            metric.field)
        return metric.score(prediction.get(metric.field), expected)

    return metric_reward


def _default_field(outputs: list[str]) -> str:
    return next((name for name in outputs if name != "reasoning"), outputs[0])
