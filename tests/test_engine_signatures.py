"""Signature parsing from the wire, in-process (no DSPy import, no worker): any text either
parses into types of the grammar and identifier names, or is refused with a ValueError."""

from __future__ import annotations

import string
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from dspy_bridge.domain.breakers import BreakerSettings, CircuitBreaker
from dspy_bridge.domain.field_schema import check_type
from dspy_bridge.domain.signatures import (
    SignatureSpec,
    check_value,
    parse_signature,
    parse_string_signature,
)
from dspy_bridge.protocol.errors import BridgeError

# The types of the first whitelist; the grammar (tests/test_signature_types.py) has more.
SIMPLE_TYPES = ("str", "int", "float", "bool", "list[str]", "list[int]", "list[float]", "dict")


def test_string_signature_forms() -> None:
    spec = parse_string_signature("context: list[ str ], question -> answer: str, n:int")
    assert [(f.name, f.type) for f in spec.inputs] == [("context", "list[str]"),
                                                      ("question", "str")]
    assert [(f.name, f.type) for f in spec.outputs] == [("answer", "str"), ("n", "int")]
    assert parse_string_signature("-> a").inputs == []


@pytest.mark.parametrize("text", [
    "q: __import__('os').system('id') -> a",
    "q: " + "list[" * 9 + "str" + "]" * 9 + " -> a",
    "q: str | None -> a",
    "q: typing.Any -> a",
    "q: ([{ -> a",
    "q -> a: ]",
])
def test_hostile_type_text_is_refused(text: str) -> None:
    with pytest.raises((ValueError, ValidationError)):
        parse_string_signature(text)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=string.printable + "→ü\x00", max_size=200))
def test_any_text_parses_to_types_of_the_grammar_or_is_refused(text: str) -> None:
    try:
        spec = parse_string_signature(text)
    except (ValueError, ValidationError):
        return
    assert spec.outputs
    for field in (*spec.inputs, *spec.outputs):
        assert field.name.isidentifier()
        assert check_type(field.type) == field.type  # canonical text of the grammar


FIELD = st.fixed_dictionaries({"name": st.from_regex(r"\A[a-z][a-z0-9_]{0,8}\Z")},
                              optional={"type": st.one_of(st.sampled_from(SIMPLE_TYPES),
                                                          st.text(max_size=20))})


@settings(max_examples=200, deadline=None)
@given(st.lists(FIELD, max_size=4), st.lists(FIELD, max_size=4))
def test_structured_signatures_are_checked_field_by_field(
    inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]
) -> None:
    try:
        spec = parse_signature({"inputs": inputs, "outputs": outputs})
    except BridgeError as error:
        assert error.type.value == "invalid_args"
        assert all(item["field"].startswith("signature") for item in error.details["errors"])
        return
    assert isinstance(spec, SignatureSpec)
    assert all(check_type(f.type) == f.type for f in (*spec.inputs, *spec.outputs))


@pytest.mark.parametrize(("value", "declared", "ok"), [
    ("x", "str", True), (1, "str", False), (True, "int", False), (3, "float", True),
    ([1, 2], "list[int]", True), ([1, "a"], "list[int]", False), ({}, "dict", True),
    ("pos", {"type": "enum", "choices": ["pos", "neg"]}, True),
    ("meh", {"type": "enum", "choices": ["pos", "neg"]}, False),
])
def test_input_values_are_checked_against_declared_types(value: Any, declared: Any,
                                                         ok: bool) -> None:
    assert (check_value(value, declared) is None) is ok


def test_circuit_breaker_lets_one_probe_through_after_the_cooldown() -> None:
    breaker = CircuitBreaker("m", BreakerSettings(failure_threshold=2, cooldown_s=0.0))
    breaker.before_call("m")
    breaker.on_failure(retryable_provider_failure=True)
    assert breaker.state == "closed"
    breaker.on_failure(retryable_provider_failure=True)
    assert breaker.state == "open"
    assert breaker.before_call("m") is True  # the cool-down (0 s) is over: the probe
    with pytest.raises(BridgeError) as raised:
        breaker.before_call("m")  # a second caller while the probe is out
    assert raised.value.details == {**raised.value.details, "reason": "circuit_open"}
    breaker.on_success()
    assert breaker.state == "closed" and breaker.before_call("m") is False


def test_the_mock_options_are_named_once() -> None:
    """LmConfig takes the mock's options at its top level too: the same names."""
    from dspy_bridge.domain.lm import MOCK_OPTION_NAMES, LmConfig

    assert set(MOCK_OPTION_NAMES) <= set(LmConfig.model_fields)
    assert MOCK_OPTION_NAMES == ("responses", "default", "sequence", "latency_ms", "fail",
                                 "generator")


def test_every_simple_type_keeps_its_check() -> None:
    samples = {"str": "s", "int": 1, "float": 1.5, "bool": True, "list[str]": ["a"],
               "list[int]": [1], "list[float]": [1.0, 2], "dict": {"k": 1}}
    assert set(samples) == set(SIMPLE_TYPES)
    for name, value in samples.items():
        assert check_type(name) == name
        assert check_value(value, name) is None
    assert check_value(True, "int") is not None  # a bool is not an int
