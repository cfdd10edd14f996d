"""msgpack values <-> their JSON form, for the golden vectors and the transcript format.

bin is `{"$bin": "<base64>"}`, ext is `{"$ext": {"type": n, "data": "<base64>"}}`, and a map
whose keys are not all strings is `{"$map": [[key, value], ...]}` (so is a one-key map whose
key is one of those three tags, which would otherwise read back as the tagged value);
everything else is the same value. Malformed `$` forms raise ValueError.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

import msgpack

TAGS = frozenset({"$bin", "$ext", "$map"})


def to_json(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$bin": _b64(bytes(value))}
    if isinstance(value, msgpack.ExtType):  # before tuple: ExtType is a namedtuple
        return {"$ext": {"type": value.code, "data": _b64(value.data)}}
    if isinstance(value, msgpack.Timestamp):  # ext type -1, which msgpack decodes itself
        return {"$ext": {"type": -1, "data": _b64(value.to_bytes())}}
    if isinstance(value, Mapping):
        plain = all(isinstance(key, str) for key in value)
        if plain and not (len(value) == 1 and next(iter(value)) in TAGS):
            return {key: to_json(item) for key, item in value.items()}
        return {"$map": [[to_json(key), to_json(item)] for key, item in value.items()]}
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    return value


def from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) == 1 and isinstance(value.get("$bin"), str):
            return _unb64(value["$bin"], "$bin")
        if len(value) == 1 and isinstance(value.get("$ext"), dict):
            ext = value["$ext"]
            if ext.keys() != {"type", "data"} or not isinstance(ext["type"], int):
                raise ValueError('$ext must be {"type": <int>, "data": "<base64>"}')
            return msgpack.ExtType(ext["type"], _unb64(ext["data"], "$ext data"))
        if len(value) == 1 and isinstance(value.get("$map"), list):
            pairs = value["$map"]
            if not all(isinstance(pair, list) and len(pair) == 2 for pair in pairs):
                raise ValueError("$map must be a list of [key, value] pairs")
            return {_hashable(from_json(key)): from_json(item) for key, item in pairs}
        return {key: from_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [from_json(item) for item in value]
    return value


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"invalid base64 in {what}: {exc}") from None


def _hashable(key: Any) -> Any:
    if isinstance(key, list):
        return tuple(_hashable(item) for item in key)
    if isinstance(key, dict):
        raise ValueError("a map cannot be a map key")
    return key
