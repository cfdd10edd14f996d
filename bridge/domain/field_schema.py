"""The subset of JSON schema an object type is written in, read as data (never
evaluated, no `$ref`, no regular expressions), and the wire form of a field's type."""

from __future__ import annotations

import functools
import json
import re
from typing import Any

from dspy_bridge.domain.field_types import (
    MAX_CHOICES,
    MAX_TYPE_DEPTH,
    AnyMap,
    Choice,
    FieldType,
    ListOf,
    Object,
    Property,
    Scalar,
    check_choices,
    nullable,
    parse_type_text,
    show,
)

MAX_SCHEMA_NODES = 500
MAX_PROPERTIES = 100
# As JSON text: what a field's schema may weigh (the engine caches what it builds from
# the schemas it has seen, so their size bounds that cache too).
MAX_SCHEMA_CHARS = 50_000

SCALAR_SCHEMAS = {"string": Scalar("str"), "integer": Scalar("int"), "number": Scalar("float"),
                  "boolean": Scalar("bool"), "null": Scalar("null")}
SCHEMA_TYPES = (*SCALAR_SCHEMAS, "array", "object")
SCHEMA_KEYWORDS = frozenset({"type", "properties", "required", "items", "enum", "description",
                             "title", "additionalProperties"})
PROPERTY_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$")


class _SchemaReader:
    def __init__(self) -> None:
        self.nodes = 0

    def read(self, schema: Any, where: str, depth: int) -> FieldType:
        at = f"at {where}: " if where else ""
        self.nodes += 1
        if self.nodes > MAX_SCHEMA_NODES:
            raise ValueError(f"a schema holds at most {MAX_SCHEMA_NODES} schemas")
        if depth > MAX_TYPE_DEPTH:
            raise ValueError(f"{at}schemas nest at most {MAX_TYPE_DEPTH} levels")
        if not isinstance(schema, dict):
            raise ValueError(f"{at}a schema is a map")
        unknown = sorted(str(k)[:40] for k in schema if k not in SCHEMA_KEYWORDS)
        if unknown:
            raise ValueError(f"{at}{unknown[0]!r} is not supported; a schema uses only "
                             + ", ".join(sorted(SCHEMA_KEYWORDS)))
        for key, limit in (("description", 5000), ("title", 200)):
            if key in schema and not (isinstance(schema[key], str) and len(schema[key]) <= limit):
                raise ValueError(f"{at}{key} must be a string of at most {limit} characters")
        kind, with_null = self.kind(schema.get("type"), "enum" in schema, at)
        for key, owner in (("properties", "object"), ("required", "object"),
                           ("additionalProperties", "object"), ("items", "array")):
            if key in schema and kind != owner:
                raise ValueError(f"{at}{key} belongs to a schema of type {owner!r}")
        node: FieldType
        if "enum" in schema:
            node = self.enum(schema["enum"], kind, with_null, at)
        elif kind == "array":
            if "items" not in schema:
                raise ValueError(f"{at}an array schema needs items")
            node = ListOf(self.read(schema["items"], f"{where}.items".lstrip("."), depth + 1))
        elif kind == "object":
            node = self.object(schema, where, depth)
        else:
            node = SCALAR_SCHEMAS[kind or "null"]
        return nullable(node) if with_null else node

    @staticmethod
    def kind(value: Any, has_enum: bool, at: str) -> tuple[str | None, bool]:
        """The schema's type and whether it admits null."""
        names = [value] if isinstance(value, str) else value
        if value is None and has_enum:
            return None, False
        if (not isinstance(names, list) or not 1 <= len(names) <= 2
                or not all(isinstance(n, str) and n in SCHEMA_TYPES for n in names)
                or len(set(names)) != len(names)):
            raise ValueError(f"{at}type must be one of {', '.join(SCHEMA_TYPES)}, or a list "
                             'of one of them and "null"')
        others = [n for n in names if n != "null"]
        if len(others) > 1:
            raise ValueError(f'{at}a type list is one type and "null"')
        return (others[0] if others else "null"), bool(others) and "null" in names

    @staticmethod
    def enum(values: Any, kind: str | None, with_null: bool, at: str) -> FieldType:
        has_null = isinstance(values, list) and None in values
        choices = check_choices([v for v in values if v is not None]
                                 if isinstance(values, list) else values, f"{at}enum: ")
        wanted = {"string": (str,), "integer": (int,), None: (str, int)}.get(kind)
        if wanted is None or not all(isinstance(v, wanted) for v in choices):
            raise ValueError(f"{at}enum values must fit the schema's type (strings or integers)")
        node: FieldType = Choice(choices)
        return nullable(node) if has_null or with_null else node

    def object(self, schema: dict[str, Any], where: str, depth: int) -> FieldType:
        at = f"at {where}: " if where else ""
        closed = schema.get("additionalProperties", True) is False
        if not isinstance(schema.get("additionalProperties", True), bool):
            raise ValueError(f"{at}additionalProperties must be true or false")
        if "properties" not in schema:
            if closed or "required" in schema:
                raise ValueError(f"{at}an object with no properties holds any map; "
                                 "required and additionalProperties: false need properties")
            return AnyMap()
        properties = schema["properties"]
        if not isinstance(properties, dict) or not 1 <= len(properties) <= MAX_PROPERTIES:
            raise ValueError(f"{at}properties must be a map of 1 to {MAX_PROPERTIES} schemas")
        required = schema.get("required", [])
        if (not isinstance(required, list) or not all(isinstance(r, str) for r in required)
                or len(set(required)) != len(required)):
            raise ValueError(f"{at}required must be a list of distinct property names")
        missing = [name for name in required if name not in properties]
        if missing:
            raise ValueError(f"{at}required names {missing[0][:60]!r}, not a property")
        read = []
        for name, inner in properties.items():
            if not isinstance(name, str) or not PROPERTY_NAME.match(name):
                raise ValueError(f"{at}property name {str(name)[:60]!r} must be a letter or _ "
                                 "then letters, digits, _ or - (at most 64)")
            node = self.read(inner, f"{where}.properties.{name}".lstrip("."), depth + 1)
            description = inner.get("description")
            read.append(Property(name, node, name in required, description))
        return Object(tuple(read), closed, schema.get("title"), schema.get("description"))


def read_schema(schema: dict[str, Any]) -> FieldType:
    return _SchemaReader().read(schema, "", 0)


# ----- the wire form of a type -----


def check_type(value: Any) -> str | dict[str, Any]:
    """A field's type as it is stored and shown: its text made canonical, an enum
    `{type: "enum", choices}`, or a JSON schema (a copy of it)."""
    if isinstance(value, str):
        return show(parse_type_text(value))
    if isinstance(value, dict):
        if value.get("type") == "enum":
            if set(value) != {"type", "choices"}:
                raise ValueError("an enum type is {type: \"enum\", choices: [str, ...]}")
            choices = value["choices"]
            if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
                raise ValueError(f"enum choices must be 1 to {MAX_CHOICES} non-empty strings")
            check_choices(choices, "enum choices: ")
            return {"type": "enum", "choices": list(choices)}
        read_schema(value)
        text = json.dumps(value)
        if len(text) > MAX_SCHEMA_CHARS:
            raise ValueError(f"a schema is at most {MAX_SCHEMA_CHARS} characters as JSON")
        copied: dict[str, Any] = json.loads(text)
        return copied
    raise ValueError("a type is a string (e.g. \"list[str]\"), {type: \"enum\", choices: "
                     "[...]} or a JSON schema ({type: \"object\", properties: {...}})")


@functools.lru_cache(maxsize=1024)
def _type_of_text(text: str) -> FieldType:
    return parse_type_text(text)


@functools.lru_cache(maxsize=128)
def _type_of_schema(key: str) -> FieldType:
    schema = json.loads(key)
    if schema.get("type") == "enum":
        return Choice(tuple(schema["choices"]))
    return read_schema(schema)


def type_of(wire: str | dict[str, Any]) -> FieldType:
    """The tree of a checked wire type."""
    if isinstance(wire, str):
        return _type_of_text(wire)
    return _type_of_schema(json.dumps(wire))  # property order is kept: the LM reads it
