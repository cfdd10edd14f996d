"""Signatures from the wire: the string and structured forms, field-name rules, and the
checks of inputs and demos against a signature. A field's type is read by
`domain.field_types` (a small grammar over type text) or `domain.field_schema` (a JSON
schema read as data), and values are checked by `domain.field_values`; a type is never
evaluated."""

from __future__ import annotations

import keyword
import math
import re
from typing import Annotated, Any

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator

from dspy_bridge.domain.field_schema import check_type, type_of
from dspy_bridge.domain.field_types import FieldType, History, Image, contains
from dspy_bridge.domain.field_values import value_problem
from dspy_bridge.domain.models import Args, invalid_from
from dspy_bridge.protocol.errors import invalid_field, invalid_fields

IDENTIFIER = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
MAX_FIELDS = 64
MAX_SIGNATURE_CHARS = 20_000
# Keyword arguments DSPy's Predict takes for itself, and the ChatAdapter's end marker.
RESERVED_FIELDS = frozenset({"signature", "demos", "config", "lm", "new_signature",
                             "prediction", "completed", "instructions", "fields"})


def check_field_name(name: Any) -> str:
    if not isinstance(name, str) or not IDENTIFIER.match(name):
        raise ValueError("a field name must be an identifier: a letter, then letters, digits or "
                         "underscores (at most 64)")
    if keyword.iskeyword(name) or name in RESERVED_FIELDS or name.startswith("model_"):
        raise ValueError(f"{name!r} is a reserved name")
    return name


DSPEX_TYPES = {"string": "str", "integer": "int", "number": "float", "boolean": "bool"}


class FieldSpec(Args):
    name: str
    desc: Annotated[str, Field(max_length=5000)] | None = None
    type: Any = "str"

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_field_name(value)

    @field_validator("type")
    @classmethod
    def _type(cls, value: Any) -> Any:
        # DSPex's names for the scalar types (`type: "string"`) are taken as ours.
        return check_type(DSPEX_TYPES.get(value, value) if isinstance(value, str) else value)

    def field_type(self) -> FieldType:
        return type_of(self.type)


class OutputFieldSpec(FieldSpec):
    """An output field: an LM writes it, so it is never an image or a history."""

    @field_validator("type")
    @classmethod
    def _output_type(cls, value: Any) -> Any:
        node = type_of(value)
        for kind, name in ((Image, "dspy.Image"), (History, "dspy.History")):
            if contains(node, kind):
                raise ValueError(f"{name} is an input type; an output field cannot hold it")
        return value


class SignatureSpec(Args):
    name: Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,99}$")] | None = None
    # DSPex calls the instructions `docstring`; either name is taken (not both).
    instructions: Annotated[Annotated[str, Field(max_length=50_000)] | None, Field(
        validation_alias=AliasChoices("instructions", "docstring"))] = None
    inputs: Annotated[list[FieldSpec], Field(max_length=MAX_FIELDS)] = Field(default_factory=list)
    outputs: Annotated[list[OutputFieldSpec], Field(min_length=1, max_length=MAX_FIELDS)]

    @model_validator(mode="after")
    def _distinct(self) -> SignatureSpec:
        names = [f.name for f in (*self.inputs, *self.outputs)]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"field names must be distinct: {', '.join(duplicates)} repeated")
        histories = [f.name for f in self.inputs if isinstance(f.field_type(), History)]
        if len(histories) > 1:
            raise ValueError("at most one input field is a dspy.History: "
                             + ", ".join(histories))
        return self

    def field_types(self) -> dict[str, FieldType]:
        return {f.name: f.field_type() for f in (*self.inputs, *self.outputs)}

    def to_wire(self) -> dict[str, Any]:
        def one(f: FieldSpec) -> dict[str, Any]:
            return {"name": f.name, "desc": f.desc, "type": f.type}

        return {"name": self.name, "instructions": self.instructions,
                "inputs": [one(f) for f in self.inputs], "outputs": [one(f) for f in self.outputs]}


def split_top_level(text: str, separator: str = ",") -> list[str]:
    """`text` cut at each `separator` outside brackets and double-quoted strings (a
    Literal's strings may hold brackets, commas or arrows)."""
    parts: list[str] = []
    start = index = depth = 0
    in_string = False
    while index < len(text):
        char = text[index]
        if in_string:
            if char == "\\":
                index += 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[(":
            depth += 1
        elif char in "])":
            depth -= 1
            if depth < 0:
                raise ValueError("unbalanced brackets")
        elif depth == 0 and text.startswith(separator, index):
            parts.append(text[start:index])
            index += len(separator)
            start = index
            continue
        index += 1
    if in_string:
        raise ValueError("an unterminated string")
    if depth != 0:
        raise ValueError("unbalanced brackets")
    parts.append(text[start:])
    return parts


def parse_string_signature(text: str) -> SignatureSpec:
    """`"context: list[str], question -> answer: str"` into its structured form."""
    if len(text) > MAX_SIGNATURE_CHARS:
        raise ValueError(f"longer than {MAX_SIGNATURE_CHARS} characters")
    halves = split_top_level(text, "->")
    if len(halves) != 2:
        raise ValueError("a string signature is `inputs -> outputs` with exactly one `->`")
    left, right = halves

    def side(part: str, what: str) -> list[dict[str, Any]]:
        if not part.strip():
            return []
        fields = []
        for item in split_top_level(part):
            name, colon, type_text = item.partition(":")
            name = name.strip()
            if not name:
                raise ValueError(f"an empty field name among the {what}")
            try:
                check_field_name(name)
                field_type = check_type(type_text.strip()) if colon else "str"
            except ValueError as exc:
                raise ValueError(f"{what} field {name[:60]!r}: {exc}") from None
            fields.append({"name": name, "type": field_type})
        return fields

    return SignatureSpec.model_validate(
        {"inputs": side(left, "input"), "outputs": side(right, "output")}
    )


def parse_signature(value: str | dict[str, Any], field: str = "signature") -> SignatureSpec:
    if isinstance(value, str):
        try:
            return parse_string_signature(value)
        except ValidationError as exc:
            raise invalid_from(exc, field) from None
        except ValueError as exc:
            raise invalid_field(field, str(exc)) from None
    try:
        return SignatureSpec.model_validate(value)
    except ValidationError as exc:
        raise invalid_from(exc, field) from None


# DSPy's adapters turn text between its custom-type markers, anywhere in a user message,
# into content parts (an image of any URL, ...): tenant text holding the start marker
# could smuggle in parts no type check saw (tests/test_signature_types.py pins the text).
DSPY_MARKER = "<<CUSTOM-TYPE-START-IDENTIFIER>>"


def wire_problem(value: Any) -> str | None:
    """A NaN or an infinity, or DSPy's marker in a string or key, anywhere in the value
    (iteratively: the depth of wire values is bounded, but not small)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return "NaN and infinity are not accepted"
        if isinstance(item, str) and DSPY_MARKER in item:
            return f"holds {DSPY_MARKER}, which DSPy would read as a content part"
        if isinstance(item, dict):
            stack.extend(item.values())
            stack.extend(key for key in item if isinstance(key, str))
        elif isinstance(item, list):
            stack.extend(item)
    return None


def locate(value: Any, node: FieldType,
           fields: dict[str, FieldType] | None = None) -> tuple[str, str] | None:
    """Why `value` does not fit the type, as (where below the field, problem), or None."""
    problem = wire_problem(value)
    if problem is not None:
        return "", problem
    return value_problem(value, node, fields)


def check_value(value: Any, declared: str | dict[str, Any]) -> str | None:
    """Why `value` does not fit the declared wire type, or None if it does."""
    found = locate(value, type_of(declared))
    if found is None:
        return None
    where, problem = found
    return f"at {where.lstrip('.')}: {problem}" if where else problem


def check_inputs(spec: SignatureSpec, inputs: dict[str, Any], field: str = "inputs") -> None:
    declared = [f.name for f in spec.inputs]
    types = spec.field_types()
    errors = [(f"{field}.{name}", "missing input field") for name in declared if name not in inputs]
    errors += [(f"{field}.{name}", "unexpected input field; the signature's inputs are "
                + (", ".join(declared) or "(none)")) for name in inputs if name not in declared]
    for name, value in inputs.items():
        if name in declared and (found := locate(value, types[name], types)):
            errors.append((f"{field}.{name}{found[0]}", found[1]))
    if errors:
        raise invalid_fields(errors)


def check_demos(spec: SignatureSpec, demos: list[dict[str, Any]], extra_fields: tuple[str, ...],
                field: str = "demos") -> None:
    types = spec.field_types()
    allowed = set(types) | set(extra_fields) | {"augmented"}
    errors = []
    for index, demo in enumerate(demos):
        for name, value in demo.items():
            if name not in allowed:
                errors.append((f"{field}.{index}.{name}", "not a field of the signature"))
            elif name in types and (found := locate(value, types[name], types)):
                errors.append((f"{field}.{index}.{name}{found[0]}", found[1]))
    if errors:
        raise invalid_fields(errors)
