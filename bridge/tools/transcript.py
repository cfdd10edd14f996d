"""The transcript format: reading and writing JSON Lines, `$bin`, matching, diffs.

Sans-I/O: pure functions over text and values. `bridge.tools.player` drives a worker with
these; `bridge.tools.record` writes them.

A transcript is UTF-8 JSON Lines, read top to bottom; blank lines and lines starting
with `#` are comments. Each other line is one object with exactly one of these keys:

- `send`: a request map, sent as one frame.
- `expect`: a response map, matched against the response with the same `id`.
- `expect_event`: an event map, matched against an event that arrived.
- `send_value` (extension): any JSON value, msgpack-packed and sent as one frame, so
  frames that are not maps (`[1, 2]`, `7`, `"x"`) can be scripted.
- `send_raw` (extension): `{"$bin": "<base64>"}`, sent as the payload of one frame as-is
  (garbage bytes, truncated msgpack, frames over the size limit).
- `worker_args` (extension): a list of worker flags; starts a fresh worker with them.

Values are in the JSON form of `protocol.jsonvalue` (shared with the golden vectors):
`{"$bin": "<base64>"}` is a msgpack bin (bytes) both ways, `{"$ext": {"type", "data"}}` an
ext, and `{"$map": [[k, v], ...]}` a map whose keys are not all strings. In
expectations, `"<any>"` matches any value including nil; `"<any:NAME>"` matches any
value and binds NAME to it (later uses must equal it); `"<var:NAME>"` stands for the
bound value, in expectations and sends.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from dspy_bridge.protocol.jsonvalue import from_json, to_json

ANY = "<any>"
_CAPTURE = re.compile(r"<any:([A-Za-z_][A-Za-z0-9_.-]*)>")
_VARIABLE = re.compile(r"<var:([A-Za-z_][A-Za-z0-9_.-]*)>")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

Path: TypeAlias = tuple[str | int, ...]
Bindings: TypeAlias = dict[str, Any]


class TranscriptError(ValueError):
    """A transcript that cannot be read; `line` is 1-based (0 when not tied to a line)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}" if line else message)
        self.line = line
        self.message = message


# ----- steps -----


@dataclass(frozen=True, slots=True)
class Send:
    message: dict[str, Any]
    line: int = 0


@dataclass(frozen=True, slots=True)
class SendValue:
    value: Any
    line: int = 0


@dataclass(frozen=True, slots=True)
class SendRaw:
    payload: bytes
    line: int = 0


@dataclass(frozen=True, slots=True)
class Expect:
    message: dict[str, Any]
    line: int = 0


@dataclass(frozen=True, slots=True)
class ExpectEvent:
    message: dict[str, Any]
    line: int = 0


@dataclass(frozen=True, slots=True)
class WorkerArgs:
    args: tuple[str, ...]
    line: int = 0


Step: TypeAlias = Send | SendValue | SendRaw | Expect | ExpectEvent | WorkerArgs

STEP_KEYS = ("send", "send_value", "send_raw", "expect", "expect_event", "worker_args")


def dumps(value: Any) -> str:
    """One compact JSON text on one line (non-ASCII kept readable; NaN written `NaN`)."""
    text = json.dumps(to_json(value), ensure_ascii=False, separators=(", ", ": "))
    # Characters some readers take for line breaks are escaped, so a step stays one line.
    return text.translate(_LINE_BREAKS)


_LINE_BREAKS = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}


# ----- reading and writing transcripts -----


def parse(text: str) -> list[Step]:
    """Every step of a transcript, in order; raises TranscriptError naming the line."""
    steps: list[Step] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TranscriptError(
                number, f"not valid JSON: {exc.msg} (column {exc.colno})"
            ) from None
        steps.append(parse_step(item, number))
    return steps


def parse_step(item: Any, line: int = 0) -> Step:
    if not isinstance(item, dict):
        raise TranscriptError(line, f"a step must be a JSON object, got {_json_type(item)}")
    keys = [key for key in item if key in STEP_KEYS]
    unknown = sorted(set(item) - set(STEP_KEYS))
    if unknown or len(keys) != 1:
        raise TranscriptError(
            line,
            f"a step must hold exactly one of {', '.join(STEP_KEYS)}"
            + (f"; unknown key(s): {', '.join(unknown)}" if unknown else ""),
        )
    kind = keys[0]
    try:
        body = from_json(item[kind])
    except ValueError as exc:
        raise TranscriptError(line, str(exc)) from None
    if kind == "send_value":
        return SendValue(body, line)
    if kind == "send_raw":
        if not isinstance(body, bytes):
            raise TranscriptError(line, 'send_raw must be {"$bin": "<base64>"}')
        return SendRaw(body, line)
    if kind == "worker_args":
        if not isinstance(body, list) or not all(isinstance(arg, str) for arg in body):
            raise TranscriptError(line, "worker_args must be a list of strings")
        return WorkerArgs(tuple(body), line)
    if not isinstance(body, dict):
        raise TranscriptError(line, f"{kind} must be a map, got {_json_type(item[kind])}")
    if kind == "send":
        return Send(body, line)
    if kind == "expect":
        return Expect(body, line)
    return ExpectEvent(body, line)


def format_step(step: Step) -> str:
    """One transcript line (without the newline)."""
    if isinstance(step, Send):
        return '{"send": ' + dumps(step.message) + "}"
    if isinstance(step, SendValue):
        return '{"send_value": ' + dumps(step.value) + "}"
    if isinstance(step, SendRaw):
        return '{"send_raw": ' + dumps(step.payload) + "}"
    if isinstance(step, Expect):
        return '{"expect": ' + dumps(step.message) + "}"
    if isinstance(step, ExpectEvent):
        return '{"expect_event": ' + dumps(step.message) + "}"
    return '{"worker_args": ' + dumps(list(step.args)) + "}"


def format_transcript(steps: Iterable[Step]) -> str:
    return "".join(format_step(step) + "\n" for step in steps)


def _json_type(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"


# ----- sends: variables -----


def substitute(value: Any, bindings: Mapping[str, Any]) -> Any:
    """A send's value with every `"<var:NAME>"` replaced by its bound value.

    Raises KeyError naming the first variable that is not bound.
    """
    if isinstance(value, str):
        name = variable_name(value)
        if name is None:
            return value
        if name not in bindings:
            raise KeyError(name)
        return bindings[name]
    if isinstance(value, dict):
        return {key: substitute(item, bindings) for key, item in value.items()}
    if isinstance(value, list):
        return [substitute(item, bindings) for item in value]
    return value


def variable_name(value: str) -> str | None:
    found = _VARIABLE.fullmatch(value)
    return found.group(1) if found else None


def capture_name(value: str) -> str | None:
    found = _CAPTURE.fullmatch(value)
    return found.group(1) if found else None


# ----- matching -----


@dataclass(frozen=True, slots=True)
class Mismatch:
    """Where an actual value first differs from the expected one, and why."""

    path: Path
    expected: Any
    actual: Any
    reason: str
    missing: bool = False

    def describe(self) -> str:
        """A few readable lines: the path, then expected vs actual."""
        where = format_path(self.path) or "(the whole message)"
        actual = "(missing)" if self.missing else _show(self.actual)
        return (
            f"at {where}: {self.reason}\n"
            f"    expected: {_show(self.expected)}\n"
            f"    actual:   {actual}"
        )


@dataclass(slots=True)
class MatchResult:
    mismatch: Mismatch | None
    bindings: Bindings = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.mismatch is None


def match(expected: Any, actual: Any, bindings: Mapping[str, Any] | None = None) -> MatchResult:
    """Match an actual message against an expectation.

    Maps match when every expected key matches (extra actual keys are fine), lists when
    they have the same length and match item by item, scalars when equal (numbers by
    value; bool, int, str, bytes and nil are distinct types). `"<any>"` matches anything.
    On success the result carries the bindings, updated with new captures; the input
    mapping is never changed.
    """
    scope: Bindings = dict(bindings or {})
    mismatch = _match(expected, actual, (), scope)
    return MatchResult(mismatch, scope if mismatch is None else dict(bindings or {}))


def _match(expected: Any, actual: Any, path: Path, bindings: Bindings) -> Mismatch | None:
    if isinstance(expected, str):
        if expected == ANY:
            return None
        name = capture_name(expected)
        if name is not None:
            if name not in bindings:
                bindings[name] = actual
                return None
            return _match_literal(bindings[name], actual, path, f" (captured as <any:{name}>)")
        name = variable_name(expected)
        if name is not None:
            if name not in bindings:
                return Mismatch(path, expected, actual, f"variable {name!r} was never captured")
            bound = bindings[name]
            return _match_literal(bound, actual, path, f" (the value of <var:{name}>)")
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return Mismatch(path, expected, actual, f"expected a map, got {_type_name(actual)}")
        for key, item in expected.items():
            if key not in actual:
                return Mismatch((*path, key), item, None, "key missing", missing=True)
            found = _match(item, actual[key], (*path, key), bindings)
            if found is not None:
                return found
        return None
    if isinstance(expected, list):
        if not isinstance(actual, list):
            return Mismatch(path, expected, actual, f"expected a list, got {_type_name(actual)}")
        if len(expected) != len(actual):
            return Mismatch(
                path, expected, actual,
                f"expected a list of {len(expected)} items, got {len(actual)}",
            )
        for index, (item, value) in enumerate(zip(expected, actual, strict=True)):
            found = _match(item, value, (*path, index), bindings)
            if found is not None:
                return found
        return None
    return _match_literal(expected, actual, path, "")


def _match_literal(expected: Any, actual: Any, path: Path, note: str) -> Mismatch | None:
    """Plain equality, used for scalars and for the values variables stand for."""
    if isinstance(expected, dict | list):
        if _equal(expected, actual):
            return None
        return Mismatch(path, expected, actual, "value differs" + note)
    if _scalar_equal(expected, actual):
        return None
    if _type_name(expected) != _type_name(actual) and not (
        _is_number(expected) and _is_number(actual)
    ):
        reason = f"expected {_type_name(expected)}, got {_type_name(actual)}"
    else:
        reason = "value differs"
    return Mismatch(path, expected, actual, reason + note)


def _equal(expected: Any, actual: Any) -> bool:
    if isinstance(expected, dict):
        return (
            isinstance(actual, dict)
            and expected.keys() == actual.keys()
            and all(_equal(expected[key], actual[key]) for key in expected)
        )
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(expected) == len(actual)
            and all(_equal(a, b) for a, b in zip(expected, actual, strict=True))
        )
    return _scalar_equal(expected, actual)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _scalar_equal(expected: Any, actual: Any) -> bool:
    if _is_number(expected) and _is_number(actual):
        if isinstance(expected, float) and isinstance(actual, float):
            if math.isnan(expected) and math.isnan(actual):
                return True
        return bool(expected == actual)
    if type(expected) is not type(actual):
        return False
    return bool(expected == actual)


def _type_name(value: Any) -> str:
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "a bool"
    if isinstance(value, int):
        return "an int"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a str"
    if isinstance(value, bytes):
        return "a bin"
    if isinstance(value, dict):
        return "a map"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


# ----- diffs -----


def format_path(path: Path) -> str:
    """`result.outputs.answer`, `result.items[2]`, `details["odd key"]`."""
    text = ""
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool):
            text += f"[{part}]"
        elif isinstance(part, str) and _IDENTIFIER.fullmatch(part):
            text += f".{part}" if text else part
        else:
            text += f"[{json.dumps(to_json(part), ensure_ascii=False)}]"
    return text


def get_path(value: Any, path: Path) -> Any:
    for part in path:
        value = value[part]
    return value


SHOW_LIMIT = 300


def _show(value: Any) -> str:
    text = dumps(value)
    if len(text) > SHOW_LIMIT:
        text = text[: SHOW_LIMIT - 3] + "..."
    return text


def show(value: Any, limit: int = 2000) -> str:
    """A message in its transcript (JSON) form, shortened for a report."""
    text = dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def same_id(expected: Any, actual: Any) -> bool:
    """Whether two request ids are the same id (`1` and `1.0` are; `1` and `"1"` are not)."""
    return _scalar_equal(expected, actual)
