"""The types a signature field may declare, as data, and the grammar of type text.

Type text is read by a small grammar here, a JSON schema as a map (`field_schema`);
neither is ever evaluated. Both become the same tree of `FieldType` nodes (hashable, so
the engine can cache what it builds from one); `field_values` checks wire values
against that tree.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

# ----- the types -----


@dataclass(frozen=True, slots=True)
class Scalar:
    name: str  # "str" | "int" | "float" | "bool" | "null"


@dataclass(frozen=True, slots=True)
class AnyMap:
    """`dict`: any map (DSPy's `dict[str, Any]`)."""


@dataclass(frozen=True, slots=True)
class ListOf:
    item: FieldType


@dataclass(frozen=True, slots=True)
class MapOf:
    value: FieldType  # keys are strings


@dataclass(frozen=True, slots=True)
class Nullable:
    inner: FieldType


@dataclass(frozen=True, slots=True)
class Choice:
    """`Literal[...]`, an enum, or a JSON schema's `enum`: strings or integers."""

    values: tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Image:
    """`dspy.Image`: an input given as bytes or as an http(s) or data URL."""


@dataclass(frozen=True, slots=True)
class History:
    """`dspy.History`: an input `{messages: [{<field>: value, ...}, ...]}`."""


@dataclass(frozen=True, slots=True)
class Property:
    name: str
    type: FieldType
    required: bool
    description: str | None = None


@dataclass(frozen=True, slots=True)
class Object:
    """A JSON schema object with properties: a pydantic model on the DSPy side."""

    properties: tuple[Property, ...]
    closed: bool = False  # additionalProperties: false
    title: str | None = None
    description: str | None = None


FieldType = Scalar | AnyMap | ListOf | MapOf | Nullable | Choice | Image | History | Object

SCALARS = ("str", "int", "float", "bool")
MAX_TYPE_DEPTH = 8
MAX_TYPE_TEXT = 5000
MAX_CHOICES = 200
MAX_CHOICE_CHARS = 500
INT_RANGE = (-(2**63), 2**64 - 1)  # what msgpack carries


def contains(node: FieldType, kind: type) -> bool:
    """Whether a node of class `kind` is anywhere in the type."""
    if isinstance(node, kind):
        return True
    if isinstance(node, ListOf):
        return contains(node.item, kind)
    if isinstance(node, MapOf):
        return contains(node.value, kind)
    if isinstance(node, Nullable):
        return contains(node.inner, kind)
    if isinstance(node, Object):
        return any(contains(p.type, kind) for p in node.properties)
    return False


def show(node: FieldType) -> str:
    """A type as its text (an object schema as the names of its properties)."""
    if isinstance(node, Scalar):
        return "nil" if node.name == "null" else node.name
    if isinstance(node, AnyMap):
        return "dict"
    if isinstance(node, ListOf):
        return f"list[{show(node.item)}]"
    if isinstance(node, MapOf):
        return f"dict[str, {show(node.value)}]"
    if isinstance(node, Nullable):
        return f"Optional[{show(node.inner)}]"
    if isinstance(node, Choice):
        return "Literal[" + ", ".join(json.dumps(v, ensure_ascii=False)
                                      for v in node.values) + "]"
    if isinstance(node, Image):
        return "dspy.Image"
    if isinstance(node, History):
        return "dspy.History"
    names = ", ".join(p.name for p in node.properties[:10])
    return "object {" + names + (", ..." if len(node.properties) > 10 else "") + "}"


def nullable(node: FieldType) -> FieldType:
    return node if isinstance(node, Nullable) or node == Scalar("null") else Nullable(node)


def check_choices(values: Any, where: str) -> tuple[str | int, ...]:
    if not isinstance(values, list) or not 1 <= len(values) <= MAX_CHOICES:
        raise ValueError(f"{where}must be 1 to {MAX_CHOICES} values")
    for value in values:
        if isinstance(value, str):
            if not 0 < len(value) <= MAX_CHOICE_CHARS:
                raise ValueError(f"{where}a string value must have 1 to {MAX_CHOICE_CHARS} "
                                 "characters")
        elif not (isinstance(value, int) and not isinstance(value, bool)
                  and INT_RANGE[0] <= value <= INT_RANGE[1]):
            raise ValueError(f"{where}values must be strings or 64-bit integers")
    if len({(type(v), v) for v in values}) != len(values):
        raise ValueError(f"{where}values must be distinct")
    return tuple(values)


# ----- type text: a small grammar, never evaluated -----

TOKEN = re.compile(r'\s*(?:([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?)'
                   r'|("(?:[^"\\]|\\.)*")|(-?[0-9]+)|([\[\],]))')
NAMES = {"str", "int", "float", "bool", "dict", "list", "Optional", "Literal",
         "dspy.Image", "Image", "dspy.History", "History"}
USAGE = ("use str, int, float, bool, dict, list[T], dict[str, T], Optional[T], "
         'Literal["a", "b"], dspy.Image or dspy.History')


def _tokens(text: str) -> list[tuple[str, str]]:
    """(kind, text) of each token: name, string, int or punctuation."""
    tokens: list[tuple[str, str]] = []
    position = 0
    stripped = text.rstrip()
    while position < len(stripped):
        match = TOKEN.match(stripped, position)
        if match is None:
            raise ValueError(f"unexpected {stripped[position:position + 20]!r}")
        group = match.lastindex or 1
        tokens.append((("name", "string", "int", "punct")[group - 1], match.group(group)))
        position = match.end()
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.index = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def take(self, expected: str | None = None) -> tuple[str, str]:
        token = self.peek()
        if token is None or (expected is not None and token[1] != expected):
            raise ValueError(f"expected {expected or 'a type'}, found "
                             + ("the end" if token is None else repr(token[1])))
        self.index += 1
        return token

    def parse(self, depth: int = 0) -> FieldType:
        if depth >= MAX_TYPE_DEPTH:
            raise ValueError(f"types nest at most {MAX_TYPE_DEPTH} levels")
        kind, name = self.take()
        if kind != "name" or name not in NAMES:
            raise ValueError(f"unknown type {name[:60]!r}; {USAGE}")
        has_args = self.peek() == ("punct", "[")
        if name in SCALARS or name in {"dspy.Image", "Image", "dspy.History", "History"}:
            if has_args:
                raise ValueError(f"{name} takes no parameters")
            if name in {"dspy.History", "History"}:
                if depth:
                    raise ValueError("dspy.History is the type of a whole input field, "
                                     "never part of one")
                return History()
            return Image() if name in {"dspy.Image", "Image"} else Scalar(name)
        if not has_args:
            if name == "dict":
                return AnyMap()
            raise ValueError(f"{name} needs parameters, e.g. {name}[str]")
        self.take("[")
        node: FieldType
        if name == "list":
            node = ListOf(self.parse(depth + 1))
        elif name == "Optional":
            node = nullable(self.parse(depth + 1))
        elif name == "dict":
            key = self.take()
            if key != ("name", "str"):
                raise ValueError("a dict's keys are str: dict[str, T]")
            self.take(",")
            node = MapOf(self.parse(depth + 1))
        else:
            node = Choice(check_choices(self.literals(), "Literal: "))
        self.take("]")
        return node

    def literals(self) -> list[Any]:
        values: list[Any] = []
        while True:
            kind, text = self.take()
            if kind == "string":
                values.append(json.loads(text))  # a JSON string literal, nothing else
            elif kind == "int":
                values.append(int(text[:25]) if len(text) <= 25 else INT_RANGE[1] + 1)
            else:
                raise ValueError('Literal takes double-quoted strings or integers, e.g. '
                                 'Literal["a", "b"]')
            if self.peek() != ("punct", ","):
                return values
            self.take(",")


def parse_type_text(text: str) -> FieldType:
    if len(text) > MAX_TYPE_TEXT:
        raise ValueError(f"a type is at most {MAX_TYPE_TEXT} characters")
    try:
        parser = _Parser(text)
        node = parser.parse()
        rest = parser.peek()
        if rest is not None:
            raise ValueError(f"unexpected {rest[1][:60]!r} after the type")
    except json.JSONDecodeError:
        raise ValueError("a Literal string is not a valid JSON string") from None
    return node
