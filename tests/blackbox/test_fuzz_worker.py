"""Done-when: a property-based fuzz over one running worker -- random and mutated frames,
wrong types in every argument field of every command listed in `ready`, oversized
containers -- asserting after every case that the worker answers `ping`, and that every
request got exactly one reply (under its id when the frame is a decodable request with a
valid id, under id nil otherwise).

Plus a deterministic matrix: every argument field of every command, each with values of
the wrong type, must be `invalid_args` naming that field ("Arguments are validated
strictly").

Readings of PROTOCOL.md used here (where it is not exact):
- nil for an *optional* argument may mean "absent", so nil is only asserted invalid for
  required fields (the fuzz still sends it everywhere and checks the reply invariants);
- a float such as 100.0 for an integer field is not listed as refused, so it is not sent
  where acceptance could shut the worker down (shutdown's grace_ms);
- frames breaking a frame limit are answered with id nil (the limits table says so), except
  frames that decoded but are nested too deeply: those are answered under their own id,
  and at a limit's exact boundary (depth 128 vs 129; bytes with or without the 4-byte
  prefix; the two readings of the items rule) either answer is accepted -- but exactly one.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st

from .client import Worker, mock_session, names_field, pack, shape

NAN, INF = float("nan"), float("inf")
MAX_BYTES, MAX_ITEMS = 200_000, 5_000
TEST_ONLY = {"sleep", "echo", "fail", "stdout_noise"}

# kind of every argument field, from PROTOCOL.md
SID = "sid"
SCHEMA: dict[str, dict[str, str]] = {
    "ping": {},
    "get_stats": {},
    "cancel": {"request_id": "id"},
    "shutdown": {"grace_ms": "int"},
    "callback_reply": {"callback_id": "str_req"},
    "configure_lm": {"session_id": SID, "model": "str_req", "api_key": "str",
                     "api_key_env": "str", "api_base": "str", "temperature": "num",
                     "top_p": "num", "max_tokens": "int", "timeout_s": "num",
                     "num_retries": "int", "cache": "bool", "extra": "map",
                     "circuit_breaker": "map"},
    "create_program": {"session_id": SID, "program_id": "str", "signature": "sig",
                       "program_type": "str", "options": "map", "lm": "lm",
                       "demos": "list", "instructions": "str"},
    "execute_program": {"session_id": SID, "program_id": "str_req", "inputs": "map_req",
                        "lm": "lm", "config": "map", "expected": "map"},
    "evaluate_program": {"session_id": SID, "program_id": "str_req", "devset": "list_req",
                         "metric": "metric_req", "max_concurrency": "int",
                         "example_timeout_ms": "int", "lm": "lm", "per_example": "bool"},
    "execute_batch": {"session_id": SID, "program_id": "str_req", "inputs": "list_req",
                      "max_concurrency": "int", "lm": "lm", "config": "map"},
    "compile_program": {"session_id": SID, "program_id": "str_req", "optimizer": "str_req",
                        "trainset": "list_req", "valset": "list", "metric": "metric_req",
                        "options": "map", "target_program_id": "str", "checkpoint": "map",
                        "lm": "lm"},
    "register_signature": {"session_id": SID, "name": "str_req", "signature": "sig"},
    "get_signature": {"session_id": SID, "name": "str_req"},
    "list_signatures": {"session_id": SID},
    "delete_signature": {"session_id": SID, "name": "str_req"},
    "register_tools": {"session_id": SID, "tools": "list_req"},
    "list_tools": {"session_id": SID},
    "delete_tool": {"session_id": SID, "name": "str_req"},
    "get_program": {"session_id": SID, "program_id": "str_req"},
    "list_programs": {"session_id": SID},
    "delete_program": {"session_id": SID, "program_id": "str_req"},
    "list_sessions": {"session_id": SID},
    "end_session": {"session_id": SID},
    "export_program": {"session_id": SID, "program_id": "str_req"},
    "import_program": {"session_id": SID, "program_id": "str", "document": "map_req"},
    "get_usage": {"session_id": SID},
    "reset_usage": {"session_id": SID},
    "get_history": {"session_id": SID, "n": "int"},
    "configure_cache": {"enable_memory": "bool", "enable_disk": "bool", "disk_dir": "str",
                        "memory_max_entries": "int", "disk_size_limit_bytes": "int"},
}

WRONG_BY_KIND: dict[str, list[Any]] = {
    "str": [5, True, 1.5, [], {}, b"x"],
    "str_req": [5, True, 1.5, [], {}, b"x", None],
    SID: [5, True, 1.5, [], {}, b"x", "", "x" * 257],
    "int": ["5", True, 1.5, [], {}, b"x", NAN, INF],
    "num": ["0.5", True, [], {}, b"x", NAN, INF, -INF],
    "bool": [1, 0, "true", [], {}, b"x", 1.0],
    "map": ["x", 5, True, [], b"x", 1.5],
    "map_req": ["x", 5, True, [], b"x", 1.5, None],
    "list": ["x", 5, True, {}, b"x"],
    "list_req": ["x", 5, True, {}, b"x", None, []],
    "metric_req": [5, True, 1.5, [], b"x", None, "", "bleu", {"name": "bleu"}],
    "lm": [5, True, 1.5, [], b"x", {}, {"temperature": 1}],
    "sig": [5, True, 1.5, [], b"x", None],
    "id": [True, False, 1.5, [], {}, b"x", None],
}

# semantically wrong values of the right type
WRONG_EXTRA: dict[tuple[str, str], list[Any]] = {
    ("configure_lm", "temperature"): [2.5, -0.1],
    ("configure_lm", "top_p"): [1.5, -0.1],
    ("configure_lm", "max_tokens"): [0, -1],
    ("configure_lm", "timeout_s"): [0, -1],
    ("configure_lm", "num_retries"): [-1, 21],
    ("configure_lm", "api_base"): ["ftp://example.invalid", "not a url"],
    ("configure_lm", "api_key_env"): ["HOME"],
    ("configure_lm", "extra"): [{"fail": {"error": "nope"}}],
    ("configure_lm", "circuit_breaker"): [{"bogus": 1}, {"failure_threshold": "5"}],
    ("create_program", "program_type"): ["foo"],
    ("create_program", "options"): [{"tools": ["x"]}, {"bogus": 1}],
    ("compile_program", "optimizer"): ["", "adam"],
    ("compile_program", "options"): [{"k": 0}, {"bogus": 1}],
    ("compile_program", "trainset"): [[{"question": 5, "answer": "x"}], [{"question": "q"}]],
    ("compile_program", "checkpoint"): [{"id": "../x"}, {"id": "ok"}],
    ("register_tools", "tools"): [[{"name": "finish"}], [{"name": "1bad"}], [{}],
                                  [{"name": "t", "parameters": {"type": "string"}}],
                                  [{"name": "t", "parameters": {"type": "object",
                                                                "pattern": "a+"}}]],
    ("delete_tool", "name"): ["", "x" * 65, "no spaces"],
    ("create_program", "signature"): ["no arrow", "q -> a: complex",
                                      "q: __import__('os') -> a",
                                      {"inputs": [], "outputs": []}, {}],
    ("create_program", "demos"): [[1], ["x"], [{"question": NAN, "answer": "a"}]],
    ("execute_program", "inputs"): [{"question": 5}, {"question": "a", "extra": "b"}, {},
                                    {"question": None}],
    ("execute_program", "config"): [{"bogus": 1}, {"temperature": "0.1"}],
    ("import_program", "document"): [{"format": "other"}, {}],
    ("configure_cache", "memory_max_entries"): [-1],
    ("configure_cache", "disk_size_limit_bytes"): [-1],
}


def baseline(cmd: str, doc: dict | None = None) -> dict[str, Any]:
    return {
        "cancel": {"request_id": 987654321},
        "shutdown": {},
        "configure_lm": {"session_id": "fz-cfg", "model": "mock"},
        "create_program": {"session_id": "fz", "signature": "question -> answer"},
        "execute_program": {"session_id": "fz", "program_id": "fzp",
                            "inputs": {"question": "hi"}},
        "evaluate_program": {"session_id": "fz", "program_id": "fzp",
                             "devset": [{"question": "hi", "answer": "x"}],
                             "metric": "exact_match"},
        "execute_batch": {"session_id": "fz", "program_id": "fzp",
                          "inputs": [{"question": "hi"}]},
        "compile_program": {"session_id": "fz", "program_id": "fzp",
                            "optimizer": "labeled_few_shot",
                            "trainset": [{"question": "hi", "answer": "x"}],
                            "metric": "exact_match", "target_program_id": "fzp-compiled"},
        "register_signature": {"session_id": "fz", "name": "FzQA",
                               "signature": "question -> answer"},
        "get_signature": {"session_id": "fz", "name": "FzQA"},
        "register_tools": {"session_id": "fz", "tools": [{"name": "fz_tool"}]},
        "list_tools": {"session_id": "fz"},
        "delete_tool": {"session_id": "fz", "name": "fz_missing"},
        "callback_reply": {"callback_id": "cb-999999", "result": 1},
        "list_signatures": {"session_id": "fz"},
        "delete_signature": {"session_id": "fz", "name": "FzQA-missing"},
        "get_program": {"session_id": "fz", "program_id": "fzp"},
        "export_program": {"session_id": "fz", "program_id": "fzp"},
        "delete_program": {"session_id": "fz", "program_id": "fzp-missing"},
        "list_programs": {"session_id": "fz"},
        "list_sessions": {"session_id": "fz"},
        "end_session": {"session_id": "fz-missing"},
        "get_usage": {"session_id": "fz"},
        "reset_usage": {"session_id": "fz"},
        "import_program": {"session_id": "fz", "document": doc or {}},
        "configure_cache": {"enable_disk": False},
    }.get(cmd, {})


def _setup(w: Worker) -> dict:
    mock_session(w, "fz", "fuzzed")
    w.ok("create_program", {"session_id": "fz", "program_id": "fzp",
                            "signature": "question -> answer"})
    return w.ok("export_program", {"session_id": "fz", "program_id": "fzp"})["document"]


# --------------------------------------------------------------------------------------
# The deterministic matrix
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def matrix():
    w = Worker()
    w.doc = _setup(w)  # type: ignore[attr-defined]
    yield w
    w.stop()


def test_every_ready_command_has_a_schema(matrix) -> None:
    unknown = [c for c in matrix.ready["commands"] if c not in SCHEMA and c not in TEST_ONLY]
    assert not unknown, f"commands in ready that PROTOCOL.md's schema here lacks: {unknown}"
    missing = [c for c in SCHEMA if c not in matrix.ready["commands"]]
    assert not missing, f"documented commands missing from ready: {missing}"


def _exactly_one(w: Worker, rid: Any) -> None:
    w.ping()
    assert w.reply_count(rid) == 1, (rid, w.replies.get(rid))


@pytest.mark.parametrize("cmd", sorted(c for c in SCHEMA if c != "shutdown"))
def test_wrong_typed_argument_fields_are_invalid_args(matrix, cmd: str) -> None:
    w = matrix
    wrong: list[str] = []
    cases: list[tuple[str, Any]] = []
    for field, kind in SCHEMA[cmd].items():
        for v in WRONG_BY_KIND[kind] + WRONG_EXTRA.get((cmd, field), []):
            cases.append((field, v))
    cases.append(("bogus_key", 1))
    for field, v in cases:
        args = baseline(cmd, w.doc)
        args[field] = v
        rid = w.new_id(f"mx-{cmd}")
        r = w.request(cmd, args, id=rid)
        _exactly_one(w, rid)
        e = r.get("error") or {}
        if not (r["success"] is False and e.get("type") == "invalid_args"
                and names_field(e, field)):
            wrong.append(f"{field}={v!r:.40} -> "
                         f"{('result ' + repr(r.get('result'))) if r['success'] else e!r:.240}")
    # args that are not a map: invalid_request
    for v in [None, [], "x", 5, True]:
        rid = w.new_id(f"mx-{cmd}-args")
        w.send({"id": rid, "command": cmd, "args": v})
        r = w.wait_reply(rid)
        _exactly_one(w, rid)
        if r.get("error", {}).get("type") != "invalid_request":
            wrong.append(f"args={v!r} -> {r.get('error') or r.get('result')!r:.200}")
    assert w.ping()["status"] == "ok"
    w.assert_clean()
    assert not wrong, f"{cmd}: {len(wrong)} wrong-typed values not refused as invalid_args " \
                      f"naming the field:\n" + "\n".join(wrong)


@pytest.mark.parametrize("field,values", [
    ("id", [-1, 1.5, True, None, [], {}, b"x", NAN]),
    ("command", [5, None, True, [], {}, b"ping", ""]),
    ("timeout_ms", [None, 0, -5, "100", True, 1.5, NAN, [], {}]),
])
def test_wrong_typed_envelope_fields_are_invalid_request(matrix, field, values) -> None:
    w = matrix
    wrong = []
    for v in values:
        rid = w.new_id("env")
        msg: dict[str, Any] = {"id": rid, "command": "ping", "args": {}}
        msg[field] = v
        nil0 = len(w.nil_replies)
        w.send(msg)
        w.ping()
        if field == "id":
            got = w.wait_nil_replies(nil0 + 1)[-1]
            w.ping()
            if len(w.nil_replies) != nil0 + 1:
                wrong.append(f"id={v!r}: {len(w.nil_replies) - nil0} nil replies")
        else:
            got = w.wait_reply(rid)
            _exactly_one(w, rid)
        if got.get("error", {}).get("type") != "invalid_request":
            wrong.append(f"{field}={v!r} -> {got!r:.200}")
    w.assert_clean()
    assert not wrong, wrong


def test_zz_shutdown_with_wrong_typed_grace_is_refused_and_does_not_shut_down(matrix) -> None:
    """Last in this module: a wrong grace_ms that is accepted would end the worker."""
    w = matrix
    wrong = []
    for v in ["100", True, [], {}, b"x", NAN, INF, -INF, {"ms": 1}, "bogus"]:
        r = w.request("shutdown", {"grace_ms": v})
        if not (r["success"] is False and r["error"]["type"] == "invalid_args"):
            wrong.append(f"grace_ms={v!r} -> {r!r:.200}")
            break
        assert w.ping()["status"] == "ok"
    r = w.request("shutdown", {"bogus": 1})
    if not (r["success"] is False and r["error"]["type"] == "invalid_args"):
        wrong.append(f"bogus key -> {r!r:.200}")
    assert not wrong, wrong
    assert w.ping()["status"] == "ok"


# --------------------------------------------------------------------------------------
# The property-based fuzz
# --------------------------------------------------------------------------------------

timestamps = st.builds(msgpack.Timestamp, st.integers(0, 2**34), st.integers(0, 999_999_999))
exts = st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8))
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
                    st.floats(), st.text(max_size=12), st.binary(max_size=12),
                    timestamps, exts)
values = st.recursive(scalars, lambda c: st.lists(c, max_size=4)
                      | st.dictionaries(st.text(max_size=6), c, max_size=4), max_leaves=10)


def _is_type(kind: str, v: Any) -> bool:
    """True when v has a type the field accepts (so it is not a wrong-typed value)."""
    if kind in ("str", "str_req", SID):
        return isinstance(v, str)
    if kind == "int":
        return (isinstance(v, int) and not isinstance(v, bool)) or (
            isinstance(v, float) and math.isfinite(v))
    if kind == "num":
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if kind == "bool":
        return isinstance(v, bool)
    if kind in ("map", "map_req"):
        return isinstance(v, dict)
    if kind == "list":
        return isinstance(v, list)
    if kind in ("lm", "sig"):
        return isinstance(v, (str, dict))
    if kind == "id":
        return isinstance(v, (int, str)) and not isinstance(v, bool)
    return False


def _valid_id(v: Any) -> bool:
    return (isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool)
                                   and 0 <= v <= 2**64 - 1))


def _mutate(data: bytes, ops: list[tuple[int, int, int]]) -> bytes:
    b = bytearray(data)
    for op, pos, val in ops:
        if not b:
            b = bytearray(b"\x80")
        p = pos % len(b)
        if op == 0:
            b[p] ^= 1 << (val % 8)
        elif op == 1:
            b[p] = val % 256
        elif op == 2:
            del b[p:p + 1 + val % 4]
        elif op == 3:
            b[p:p] = bytes([val % 256]) * (1 + val % 3)
        elif op == 4:
            b = b[:p]
        else:
            b[p:p] = b[p:p + 1 + val % 8]
    return bytes(b)


def classify(payload: bytes) -> tuple[str, Any]:
    """What reply the frame must get: ("id", rid), ("nil", None) or ("either", rid)."""
    n = len(payload)
    if n > MAX_BYTES + 4:
        return ("nil", None)
    near_bytes = n > MAX_BYTES - 4
    try:
        up = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=0)
        up.feed(payload)
        value = up.unpack()
        try:
            up.unpack()
            return ("nil", None)  # trailing bytes
        except msgpack.OutOfData:
            pass
    except Exception:  # noqa: BLE001
        return ("nil", None)
    depth, objects = shape(value)
    containers = _containers(value)
    spec_items = objects + containers - 1  # a nested container counted once more
    # PROTOCOL.md: a frame that decoded but is too deep is answered under its own id
    # (one too deep for msgpack to decode at all failed above, and gets nil).
    if objects > MAX_ITEMS:
        return ("nil", None)
    borderline = near_bytes or depth in (128, 129) or spec_items > MAX_ITEMS
    if not isinstance(value, dict):
        return ("nil", None)
    rid = value.get("id")
    if not _valid_id(rid):
        return ("nil", None)
    try:
        pairs = msgpack.unpackb(payload, raw=False, strict_map_key=False,
                                object_pairs_hook=list)
        keys = [k for k, _ in pairs]
        if keys.count("id") > 1:
            borderline = True
    except Exception:  # noqa: BLE001
        borderline = True
    return ("either", rid) if borderline else ("id", rid)


def _containers(value: Any) -> int:
    count, stack = 0, [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            count += 1
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            count += 1
            stack.extend(v)
    return count


class Ledger:
    def __init__(self, w: Worker) -> None:
        self.w = w
        self.ids = itertools.count(1)
        with w.cond:
            self.expected_total = self._actual()
        self.cases = 0

    def _actual(self) -> int:
        return sum(len(v) for v in self.w.replies.values()) + len(self.w.nil_replies)

    def fresh_id(self, as_int: bool) -> Any:
        n = next(self.ids)
        return 10**12 + n if as_int else f"fz-{n}"

    def run(self, payload: bytes, what: str) -> None:
        w = self.w
        kind, rid = classify(payload)
        note(f"{what}: {len(payload)} bytes, expect {kind} {rid!r:.80}; "
             f"head {payload[:120]!r}")
        nil0 = len(w.nil_replies)
        cnt0 = w.reply_count(rid) if rid is not None else 0
        w.send_payload(payload, rid, known=True)
        barrier = w.request("ping", id=f"barrier-{next(self.ids)}")
        assert barrier["success"] is True and barrier["result"]["status"] == "ok", barrier

        def arrived() -> Any:
            got_nil = len(w.nil_replies) - nil0
            got_id = (w.reply_count(rid) - cnt0) if rid is not None else 0
            return (got_nil, got_id) if got_nil + got_id >= 1 else None

        got_nil, got_id = w._wait(arrived, f"the reply to {what}", 30)
        w.ping()  # one more round trip: a duplicate would be here by now
        got_nil = len(w.nil_replies) - nil0
        got_id = (w.reply_count(rid) - cnt0) if rid is not None else 0
        self.expected_total += 3
        assert got_nil + got_id == 1, f"{what}: {got_nil} nil replies + {got_id} under id"
        if kind == "id":
            assert got_id == 1, f"{what}: a decodable request with id {rid!r:.60} was " \
                                f"answered with id nil: {w.nil_replies[-1]!r:.300}"
        elif kind == "nil":
            assert got_nil == 1, f"{what}: expected an id-nil reply"
        with w.cond:
            actual = self._actual()
        assert actual == self.expected_total, \
            f"{actual - self.expected_total} more replies than requests so far"
        w.assert_clean()
        self.cases += 1


@pytest.fixture(scope="module")
def fuzz():
    w = Worker("--max-frame-bytes", str(MAX_BYTES), "--max-frame-items", str(MAX_ITEMS))
    w.doc = _setup(w)  # type: ignore[attr-defined]
    w.ledger = Ledger(w)  # type: ignore[attr-defined]
    yield w
    w.stop()


@st.composite
def cases(draw: Any, commands: list[str], doc: dict, ledger: Ledger) -> tuple[bytes, str]:
    kind = draw(st.sampled_from(["wrong_field", "wrong_field", "wrong_field", "envelope",
                                 "random", "mutated", "mutated", "oversized", "raw"]))
    as_int = draw(st.booleans())
    rid = ledger.fresh_id(as_int)
    safe_cmds = [c for c in commands if c not in ("shutdown", "configure_cache")]
    if kind == "wrong_field":
        cmd = draw(st.sampled_from(commands))
        fields = SCHEMA.get(cmd, {})
        args = baseline(cmd, doc)
        if fields and draw(st.integers(0, 5)) > 0:
            field = draw(st.sampled_from(sorted(fields)))
            fk = fields[field]
            pool = WRONG_BY_KIND[fk] + WRONG_EXTRA.get((cmd, field), [])
            if cmd == "shutdown":
                v = draw(st.sampled_from([x for x in pool if (x is not None
                                          and not isinstance(x, float)) or x != x
                                          or x in (INF, -INF)]))
            else:
                v = draw(st.one_of(st.sampled_from(pool),
                                   values.filter(lambda x, fk=fk: not _is_type(fk, x))))
            args[field] = v
        else:
            if cmd == "shutdown":
                args["grace_ms"] = "5"
            args[draw(st.text(min_size=1, max_size=8).filter(lambda k: k not in fields))] = \
                draw(values)
        return pack({"id": rid, "command": cmd, "args": args}), f"{cmd} {args!r:.200}"
    if kind == "envelope":
        msg: dict[Any, Any] = {"id": rid, "command": draw(st.sampled_from(safe_cmds)),
                               "args": {}}
        which = draw(st.sampled_from(["id", "command", "args", "timeout_ms", "extra"]))
        if which == "id":
            msg["id"] = draw(values.filter(lambda x: not _valid_id(x)))
        elif which == "command":
            msg["command"] = draw(st.one_of(values.filter(lambda x: not isinstance(x, str)),
                                            st.just(""),
                                            st.text(max_size=10).filter(
                                                lambda c: c not in ("shutdown",
                                                                    "configure_cache"))))
        elif which == "args":
            msg["args"] = draw(values.filter(lambda x: not isinstance(x, dict)))
        elif which == "timeout_ms":
            msg["timeout_ms"] = draw(st.one_of(
                values.filter(lambda x: not (isinstance(x, int) and not isinstance(x, bool)
                                             and x > 0)),
                st.integers(1, 10)))
        else:
            key = st.one_of(st.text(max_size=8), st.integers(-(2**63), 2**64 - 1),
                            st.binary(max_size=3))  # the keys msgpack can carry
            msg[draw(key
                     .filter(lambda k: k not in ("id", "command", "args", "timeout_ms")))] = \
                draw(values)
        return pack(msg), f"envelope.{which} {msg!r:.200}"
    if kind == "random":
        top = draw(st.one_of(
            values,
            st.fixed_dictionaries({"id": st.just(rid),
                                   "command": st.sampled_from(safe_cmds)},
                                  optional={"args": values, "timeout_ms": values})))
        return pack(top), f"random {top!r:.200}"
    if kind == "mutated":
        cmd = draw(st.sampled_from(safe_cmds))
        base = pack({"id": rid, "command": cmd, "args": baseline(cmd, doc)})
        ops = draw(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 10**6),
                                      st.integers(0, 255)), min_size=1, max_size=4))
        return _mutate(base, ops), f"mutated {cmd} {ops}"
    if kind == "oversized":
        shape_kind = draw(st.sampled_from(["nils", "empties", "deep", "keys", "string",
                                           "deep_maps"]))
        if shape_kind == "nils":
            v: Any = [None] * draw(st.integers(MAX_ITEMS - 1500, MAX_ITEMS + 1500))
        elif shape_kind == "empties":
            v = [{}] * draw(st.integers(MAX_ITEMS // 2 - 800, MAX_ITEMS + 800))
        elif shape_kind == "deep":
            v = None
            for _ in range(draw(st.integers(100, 400))):
                v = [v]
        elif shape_kind == "deep_maps":
            v = None
            for _ in range(draw(st.integers(100, 400))):
                v = {"d": v}
        elif shape_kind == "keys":
            v = {f"k{i}": i for i in range(draw(st.integers(1000, 3500)))}
        else:
            v = "s" * draw(st.integers(MAX_BYTES - 2000, MAX_BYTES + 2000))
        cmd = draw(st.sampled_from(safe_cmds))
        args = baseline(cmd, doc)
        args[draw(st.sampled_from(["x", *sorted(SCHEMA.get(cmd, {}))]))] = v
        return pack({"id": rid, "command": cmd, "args": args}), f"oversized {shape_kind} {cmd}"
    raw = draw(st.binary(max_size=64))
    return raw, f"raw {raw!r}"


@settings(max_examples=500, deadline=None, database=None, print_blob=True,
          suppress_health_check=list(HealthCheck),
          phases=[Phase.explicit, Phase.generate])
@given(data=st.data())
def test_fuzz_worker_always_answers_ping_and_replies_exactly_once(fuzz, data) -> None:
    ledger: Ledger = fuzz.ledger
    payload, what = data.draw(cases(fuzz.ready["commands"], fuzz.doc, ledger))
    ledger.run(payload, what)


def test_fuzz_worker_still_useful_afterwards(fuzz) -> None:
    w = fuzz
    assert w.ping()["status"] == "ok"
    mock_session(w, "after-fuzz", "still works")
    w.ok("create_program", {"session_id": "after-fuzz", "program_id": "p",
                            "signature": "question -> answer"})
    res = w.ok("execute_program", {"session_id": "after-fuzz", "program_id": "p",
                                   "inputs": {"question": "q"}})
    assert res["outputs"] == {"answer": "still works"}
    stats = w.ok("get_stats")
    for cmd, lat in stats["latency_ms"].items():
        assert lat["p50_ms"] <= lat["p95_ms"] <= lat["p99_ms"] <= lat["max_ms"], (cmd, lat)
    w.assert_clean()
