"""Wire values checked against a field's type: scalars, containers, enums, JSON-schema
objects, images (bytes with a sniffed image type, or an http(s) or data URL; nothing is
fetched or decoded) and conversations."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from dspy_bridge.domain.field_types import (
    AnyMap,
    Choice,
    FieldType,
    History,
    Image,
    ListOf,
    MapOf,
    Nullable,
    Object,
    Scalar,
    show,
)

MAX_HISTORY_MESSAGES = 1000
MAX_URL_CHARS = 8192

def type_name(value: Any) -> str:
    return "nil" if value is None else type(value).__name__


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


SCALAR_FITS: dict[str, Callable[[Any], bool]] = {
    "str": lambda v: isinstance(v, str), "int": _is_int, "float": _is_number,
    "bool": lambda v: isinstance(v, bool), "null": lambda v: v is None}
IMAGE_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"),
               (b"GIF87a", "image/gif"), (b"GIF89a", "image/gif"))
DATA_URL = re.compile(r"data:(image/(?:png|jpeg|gif|webp));base64,([A-Za-z0-9+/]*={0,2})\Z")


def image_mime(data: bytes) -> str | None:
    """The MIME type sniffed from an image's first bytes (PNG, JPEG, GIF, WebP), or None."""
    for magic, mime in IMAGE_MAGIC:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def image_problem(value: Any) -> str | None:
    if isinstance(value, bytes):
        return None if image_mime(value) else (
            "is not a PNG, JPEG, GIF or WebP image (judged by its first bytes)")
    if not isinstance(value, str):
        return f"expected an image (bin, or an http(s) or data URL), got {type_name(value)}"
    if value.startswith("data:"):
        match = DATA_URL.match(value)
        if match is None or len(match.group(2)) % 4:
            return ("a data URL must be data:image/<png|jpeg|gif|webp>;base64,<base64 "
                    "data>")
        try:
            head = base64.b64decode(match.group(2)[:24], validate=True)
        except binascii.Error:
            return "a data URL's data is not valid base64"
        return None if image_mime(head) == match.group(1) else (
            f"a data URL's data is not a {match.group(1)} image")
    if len(value) > MAX_URL_CHARS or any(c.isspace() or not c.isprintable() for c in value):
        return f"an image URL has at most {MAX_URL_CHARS} printable characters and no blanks"
    try:
        parts = urlsplit(value)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        return "an image URL must be http(s)://host/... or a data:image/...;base64 URL"
    return None


def _key(name: Any) -> str:
    text = str(name)
    return text if len(text) <= 60 else text[:60] + "..."


def value_problem(value: Any, node: FieldType,
                  fields: Mapping[str, FieldType] | None = None) -> tuple[str, str] | None:
    """Why `value` does not fit `node`, as (where below the field, e.g. ".items.2",
    problem), or None. `fields` are the signature's fields, which a history's messages
    hold. Recursion follows the type, whose depth is bounded, not the value."""
    if isinstance(node, Scalar):
        return None if SCALAR_FITS[node.name](value) else (
            "", f"expected {show(node)}, got {type_name(value)}")
    if isinstance(node, Nullable):
        return None if value is None else value_problem(value, node.inner, fields)
    if isinstance(node, Choice):
        if any(type(value) is type(v) and value == v for v in node.values):
            return None
        return "", f"must be one of {list(node.values)!r}"[:600]
    if isinstance(node, Image):
        problem = image_problem(value)
        return None if problem is None else ("", problem)
    if isinstance(node, ListOf):
        if not isinstance(value, list):
            return "", f"expected {show(node)}, got {type_name(value)}"
        for index, item in enumerate(value):
            found = value_problem(item, node.item, fields)
            if found:
                return f".{index}{found[0]}", found[1]
        return None
    if not isinstance(value, dict):
        return "", f"expected {'a map' if isinstance(node, AnyMap) else show(node)}, " \
                   f"got {type_name(value)}"
    if isinstance(node, AnyMap):
        return None
    if isinstance(node, MapOf):
        for key, item in value.items():
            if not isinstance(key, str):
                return "", f"keys must be strings, got {type_name(key)}"
            found = value_problem(item, node.value, fields)
            if found:
                return f".{_key(key)}{found[0]}", found[1]
        return None
    if isinstance(node, History):
        return _history_problem(value, fields or {})
    return _object_problem(value, node, fields)


def _object_problem(value: dict[Any, Any], node: Object,
                    fields: Mapping[str, FieldType] | None) -> tuple[str, str] | None:
    declared = {p.name: p for p in node.properties}
    for key in value:
        if not isinstance(key, str):
            return "", f"keys must be strings, got {type_name(key)}"
        if node.closed and key not in declared:
            return f".{_key(key)}", "not a property of the object"
    for prop in node.properties:
        if prop.name not in value or (value[prop.name] is None and not prop.required):
            if prop.required:
                return f".{prop.name}", "missing required property"
            continue
        found = value_problem(value[prop.name], prop.type, fields)
        if found:
            return f".{prop.name}{found[0]}", found[1]
    return None


def _history_problem(value: dict[Any, Any],
                     fields: Mapping[str, FieldType]) -> tuple[str, str] | None:
    messages = value.get("messages")
    if set(value) != {"messages"} or not isinstance(messages, list):
        return "", "a history is {messages: [{<field>: value, ...}, ...]}"
    if len(messages) > MAX_HISTORY_MESSAGES:
        return ".messages", f"at most {MAX_HISTORY_MESSAGES} messages"
    allowed = {name: node for name, node in fields.items() if not isinstance(node, History)}
    allowed.setdefault("reasoning", Scalar("str"))
    for index, message in enumerate(messages):
        where = f".messages.{index}"
        if not isinstance(message, dict) or not message:
            return where, "a message is a non-empty map of the signature's field values"
        for key, item in message.items():
            if key not in allowed:
                return f"{where}.{_key(key)}", ("not a field of the signature; a message "
                                                "holds " + ", ".join(allowed))
            found = value_problem(item, allowed[key])
            if found:
                return f"{where}.{key}{found[0]}", found[1]
    return None
