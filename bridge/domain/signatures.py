"""Signatures from the wire: the string and structured forms, the one table of wire
types, field-name rules, and the checks of inputs and demos against a signature. Type
text is compared with the table, never evaluated."""

from __future__ import annotations

import keyword
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from dspy_bridge.domain.models import Args, invalid_from
from dspy_bridge.protocol.errors import invalid_field, invalid_fields


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class WireType:
    """A type a signature field may declare: the Python annotation DSPy is given, and
    whether a wire value fits it."""

    annotation: Any
    fits: Callable[[Any], bool]


# The one table of wire types (the enum form, `{type: enum, choices}`, is apart).
WIRE_TYPES: dict[str, WireType] = {
    "str": WireType(str, lambda v: isinstance(v, str)),
    "int": WireType(int, _is_int),
    "float": WireType(float, _is_number),
    "bool": WireType(bool, lambda v: isinstance(v, bool)),
    "list[str]": WireType(list[str], lambda v: isinstance(v, list)
                          and all(isinstance(i, str) for i in v)),
    "list[int]": WireType(list[int], lambda v: isinstance(v, list) and all(map(_is_int, v))),
    "list[float]": WireType(list[float],
                            lambda v: isinstance(v, list) and all(map(_is_number, v))),
    "dict": WireType(dict[str, Any], lambda v: isinstance(v, dict)),
}
SCALAR_TYPES = tuple(WIRE_TYPES)


def annotation_of(wire_type: str | dict[str, Any]) -> Any:
    """The annotation a checked wire type stands for (an enum is a `Literal`)."""
    if isinstance(wire_type, dict):
        return Literal.__getitem__(tuple(wire_type["choices"]))
    return WIRE_TYPES[wire_type].annotation
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


def check_type(value: Any) -> str | dict[str, Any]:
    """A wire type: one of the whitelisted names, or `{type: "enum", choices: [...]}`.

    Type text is compared with the whitelist after removing blanks; it is never evaluated.
    """
    if isinstance(value, str):
        name = re.sub(r"\s+", "", value)
        if name not in SCALAR_TYPES:
            shown = value if len(value) <= 60 else value[:60] + "..."
            raise ValueError(f"unsupported type {shown!r}; use one of {', '.join(SCALAR_TYPES)} "
                             "or {type: enum, choices: [...]}")
        return name
    if isinstance(value, dict):
        if set(value) != {"type", "choices"} or value.get("type") != "enum":
            raise ValueError("a structured type is {type: \"enum\", choices: [str, ...]}")
        choices = value["choices"]
        if (not isinstance(choices, list) or not 1 <= len(choices) <= 200
                or not all(isinstance(c, str) and 0 < len(c) <= 500 for c in choices)):
            raise ValueError("enum choices must be 1 to 200 non-empty strings")
        if len(set(choices)) != len(choices):
            raise ValueError("enum choices must be distinct")
        return {"type": "enum", "choices": list(choices)}
    raise ValueError("a type is a string (e.g. \"list[str]\") or {type: \"enum\", choices: [...]}")


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
        return check_type(value)


class SignatureSpec(Args):
    name: Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,99}$")] | None = None
    instructions: Annotated[str, Field(max_length=50_000)] | None = None
    inputs: Annotated[list[FieldSpec], Field(max_length=MAX_FIELDS)] = Field(default_factory=list)
    outputs: Annotated[list[FieldSpec], Field(min_length=1, max_length=MAX_FIELDS)]

    @model_validator(mode="after")
    def _distinct(self) -> SignatureSpec:
        names = [f.name for f in (*self.inputs, *self.outputs)]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"field names must be distinct: {', '.join(duplicates)} repeated")
        return self

    def field_types(self) -> dict[str, Any]:
        return {f.name: f.type for f in (*self.inputs, *self.outputs)}

    def to_wire(self) -> dict[str, Any]:
        def one(f: FieldSpec) -> dict[str, Any]:
            return {"name": f.name, "desc": f.desc, "type": f.type}

        return {"name": self.name, "instructions": self.instructions,
                "inputs": [one(f) for f in self.inputs], "outputs": [one(f) for f in self.outputs]}


def split_top_level(text: str, separator: str = ",") -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char in "[(":
            depth += 1
        elif char in "])":
            depth -= 1
            if depth < 0:
                raise ValueError("unbalanced brackets")
        if char == separator and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth != 0:
        raise ValueError("unbalanced brackets")
    parts.append("".join(current))
    return parts


def parse_string_signature(text: str) -> SignatureSpec:
    """`"context: list[str], question -> answer: str"` into its structured form."""
    if len(text) > MAX_SIGNATURE_CHARS:
        raise ValueError(f"longer than {MAX_SIGNATURE_CHARS} characters")
    if text.count("->") != 1:
        raise ValueError("a string signature is `inputs -> outputs` with exactly one `->`")
    left, right = text.split("->")

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


def type_name(value: Any) -> str:
    return "nil" if value is None else type(value).__name__


def has_non_finite(value: Any) -> bool:
    """Whether a NaN or an infinity hides anywhere in the value (iteratively: the depth
    of wire values is bounded, but not small)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return True
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def check_value(value: Any, declared: Any) -> str | None:
    """Why `value` does not fit the declared wire type, or None if it does."""
    if has_non_finite(value):
        return "NaN and infinity are not accepted"
    if isinstance(declared, dict):
        return None if value in declared["choices"] else (
            f"must be one of {declared['choices']!r}")
    if WIRE_TYPES[declared].fits(value):
        return None
    return f"expected {declared}, got {type_name(value)}"


def check_inputs(spec: SignatureSpec, inputs: dict[str, Any], field: str = "inputs") -> None:
    declared = {f.name: f.type for f in spec.inputs}
    errors = [(f"{field}.{name}", "missing input field") for name in declared if name not in inputs]
    errors += [(f"{field}.{name}", "unexpected input field; the signature's inputs are "
                + (", ".join(declared) or "(none)")) for name in inputs if name not in declared]
    for name, value in inputs.items():
        if name in declared and (problem := check_value(value, declared[name])):
            errors.append((f"{field}.{name}", problem))
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
            elif name in types and (problem := check_value(value, types[name])):
                errors.append((f"{field}.{index}.{name}", problem))
    if errors:
        raise invalid_fields(errors)
