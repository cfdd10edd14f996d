"""msgpack values <-> JSON-safe values, for vectors and transcripts.

bin becomes `{"$bin": "<base64>"}` and ext becomes `{"$ext": {"type": n, "data": "<base64>"}}`;
everything else is the same value. Shared by the golden vectors and the transcript format.
"""

from __future__ import annotations

import base64
from typing import Any

import msgpack


def to_json(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$bin": base64.b64encode(value).decode("ascii")}
    if isinstance(value, msgpack.ExtType):
        return {"$ext": {"type": value.code, "data": base64.b64encode(value.data).decode("ascii")}}
    if isinstance(value, dict):
        return {key: to_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    return value


def from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if value.keys() == {"$bin"}:
            return base64.b64decode(value["$bin"], validate=True)
        if value.keys() == {"$ext"}:
            ext = value["$ext"]
            return msgpack.ExtType(ext["type"], base64.b64decode(ext["data"], validate=True))
        return {key: from_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [from_json(item) for item in value]
    return value
