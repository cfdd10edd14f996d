"""Black-box contract of host functions and callbacks, from PROTOCOL.md alone.

Covers "Host functions and callbacks: register_tools, list_tools, delete_tool,
callback_reply", the `react` / `best_of_n` / `refine` program types, the mock provider's
`generator` option, `host_error`, the `callback` and `callback_abandoned` events and
`--callback-timeout-ms`. Every test spawns the real worker and speaks raw frames
(`_callbacks_host.Host`); waits are for frames, never for time.
"""

from __future__ import annotations

import math
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from ._callbacks_host import (
    MISSING,
    PYTHON,
    ROOT,
    WAIT,
    Host,
    final,
    mock_lm,
    names_field,
    step,
)

LOOKUP = {
    "name": "lookup_order",
    "description": "Look up an order by its id.",
    "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}},
                   "required": ["order_id"], "additionalProperties": False},
}
REFUND = {
    "name": "refund",
    "description": "Refund an amount on an order.",
    "parameters": {"type": "object",
                   "properties": {"order_id": {"type": "string"}, "amount": {"type": "integer"}},
                   "required": ["order_id", "amount"]},
}
DEFAULT_PARAMETERS = {"type": "object", "properties": {}}
ERROR_PREFIX = "Execution error in {}: "


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def w() -> Iterator[Host]:
    h = Host()
    yield h
    h.stop()


@pytest.fixture(scope="module")
def cbt() -> Iterator[Host]:
    """A worker whose callbacks wait at most 1.5 s."""
    h = Host("--callback-timeout-ms", "1500")
    yield h
    h.stop()


@pytest.fixture
def fresh() -> Iterator[Host]:
    h = Host()
    yield h
    h.stop()


# ------------------------------------------------------------------------------ helpers
def react_setup(h: Host, session: str, sequence: list[Any],
                tools: list[dict[str, Any]] | None = None, program_id: str = "agent",
                max_iters: int = 5) -> None:
    tools = [LOOKUP, REFUND] if tools is None else tools
    h.ok("register_tools", {"session_id": session, "tools": tools})
    h.ok("configure_lm", mock_lm(session, sequence))
    h.ok("create_program", {"session_id": session, "program_id": program_id,
                            "signature": "question -> answer", "program_type": "react",
                            "options": {"tools": [t["name"] for t in tools],
                                        "max_iters": max_iters}})


def execute(h: Host, session: str, program_id: str = "agent", question: str = "Where is A-17?",
            *, id: Any = None, timeout_ms: int | None = None, **args: Any) -> Any:
    a: dict[str, Any] = {"session_id": session, "program_id": program_id,
                         "inputs": {"question": question}, **args}
    return h.start("execute_program", a, id=id, timeout_ms=timeout_ms)


def success(h: Host, rid: Any) -> dict[str, Any]:
    r = h.reply(rid)
    assert r["success"] is True, f"request {rid!r} failed: {r!r:.1500}"
    return r["result"]


def failure(h: Host, rid: Any, etype: str) -> dict[str, Any]:
    r = h.reply(rid)
    assert r["success"] is False, f"request {rid!r} succeeded: {r!r:.1500}"
    assert r["error"]["type"] == etype, f"expected {etype}: {r!r:.1500}"
    return r["error"]


def check_callback_event(cb: dict[str, Any], *, rid: Any, session: str, function: str,
                         purpose: str, args: Any = MISSING) -> None:
    for k in ("event", "callback_id", "request_id", "session_id", "function", "purpose",
              "args", "timeout_ms"):
        assert k in cb, f"callback event lacks {k!r}: {cb}"
    assert "id" not in cb, cb
    assert isinstance(cb["callback_id"], str) and cb["callback_id"].startswith("cb-"), cb
    assert cb["callback_id"][3:].isdigit() and int(cb["callback_id"][3:]) >= 1, cb
    assert type(cb["request_id"]) is type(rid) and cb["request_id"] == rid, cb
    assert cb["session_id"] == session, cb
    assert cb["function"] == function, cb
    assert cb["purpose"] == purpose, cb
    assert isinstance(cb["timeout_ms"], int) and not isinstance(cb["timeout_ms"], bool), cb
    assert 0 < cb["timeout_ms"] <= 60000, cb
    if args is not MISSING:
        assert cb["args"] == args, cb


def check_abandoned(h: Host, cb: dict[str, Any], rid: Any, reason: str) -> dict[str, Any]:
    abs_ = h.abandoned(cb["callback_id"])
    assert len(abs_) == 1, f"expected one callback_abandoned for {cb['callback_id']}: {abs_}"
    ab = abs_[0]
    assert "id" not in ab, ab
    assert ab["callback_id"] == cb["callback_id"], ab
    assert type(ab["request_id"]) is type(rid) and ab["request_id"] == rid, ab
    assert ab["reason"] == reason, f"abandoned for {ab['reason']!r}, expected {reason!r}: {ab}"
    assert h.seq(ab) < h.seq(h.reply(rid)), "callback_abandoned came after the response"
    return ab


def assert_not_waiting(h: Host, callback_id: str) -> None:
    for kw in ({"result": "late"}, {"error": {"message": "late"}}):
        r = h.callback_reply(callback_id, **kw)
        assert r["success"] is True, f"a late callback_reply is never an error: {r}"
        assert r["result"].get("accepted") is False, r
        assert r["result"].get("reason") == "not_waiting", r


def steps(result: dict[str, Any]) -> list[dict[str, Any]]:
    traj = result.get("trajectory")
    assert isinstance(traj, list) and traj, f"react result without trajectory: {result!r:.1000}"
    for s in traj:
        for k in ("thought", "tool_name", "tool_args", "observation"):
            assert k in s, f"trajectory step lacks {k!r}: {s}"
    assert traj[-1]["tool_name"] == "finish", traj
    return traj


def host_error_details(err: dict[str, Any], *, reason: str, function: str,
                       purpose: str) -> dict[str, Any]:
    d = err.get("details")
    assert isinstance(d, dict), err
    assert d.get("reason") == reason, f"details.reason {d.get('reason')!r} != {reason!r}: {err}"
    assert d.get("function") == function, err
    assert d.get("purpose") == purpose, err
    return d


def generator_setup(h: Host, session: str, program_type: str = "predict",
                    function: str = "gen_fn", model: str = "mock/gen") -> None:
    h.ok("register_tools", {"session_id": session,
                            "tools": [{"name": function, "description": "mock answers"}]})
    # no `cache` key: a generator mock is never cached anyway
    h.ok("configure_lm", {"session_id": session, "model": model, "num_retries": 0,
                          "extra": {"generator": function}})
    h.ok("create_program", {"session_id": session, "program_id": "p",
                            "signature": "question -> answer", "program_type": program_type})


def reward_setup(h: Host, session: str, sequence: list[Any], program_type: str = "best_of_n",
                 n: int = 3, function: str = "score", **options: Any) -> None:
    h.ok("register_tools", {"session_id": session, "tools": [
        {"name": function, "description": "scores an attempt",
         "parameters": {"type": "object"}}]})
    h.ok("configure_lm", mock_lm(session, sequence))
    h.ok("create_program", {"session_id": session, "program_id": "p",
                            "signature": "question -> answer", "program_type": program_type,
                            "options": {"n": n, "reward": {"function": function}, **options}})


# ============================================================= declaring host functions
def test_register_list_delete_shapes(w: Host) -> None:
    s = "reg-shapes"
    r = w.ok("register_tools", {"session_id": s, "tools": [LOOKUP, REFUND]})
    assert r["session_id"] == s and r["registered"] == ["lookup_order", "refund"], r
    assert r["tools"] == 2, r
    r = w.ok("register_tools", {"session_id": s, "tools": [{"name": "third"}]})
    assert r["registered"] == ["third"] and r["tools"] == 3, r

    listed = w.ok("list_tools", {"session_id": s})
    assert listed["session_id"] == s, listed
    by_name = {t["name"]: t for t in listed["tools"]}
    assert set(by_name) == {"lookup_order", "refund", "third"}, listed
    for t in listed["tools"]:
        assert {"name", "description", "parameters"} <= set(t), t
    assert by_name["lookup_order"]["description"] == LOOKUP["description"]
    assert by_name["lookup_order"]["parameters"] == LOOKUP["parameters"]
    assert by_name["refund"]["parameters"] == REFUND["parameters"]
    assert by_name["third"]["parameters"] == DEFAULT_PARAMETERS, by_name["third"]

    # registering a name again replaces its declaration; the count does not grow
    r = w.ok("register_tools", {"session_id": s, "tools": [
        {"name": "lookup_order", "description": "v2", "parameters": DEFAULT_PARAMETERS}]})
    assert r["registered"] == ["lookup_order"] and r["tools"] == 3, r
    by_name = {t["name"]: t for t in w.ok("list_tools", {"session_id": s})["tools"]}
    assert by_name["lookup_order"]["description"] == "v2"
    assert by_name["lookup_order"]["parameters"] == DEFAULT_PARAMETERS

    r = w.ok("delete_tool", {"session_id": s, "name": "refund"})
    assert r["deleted"] is True and r["session_id"] == s and r["name"] == "refund", r
    names = {t["name"] for t in w.ok("list_tools", {"session_id": s})["tools"]}
    assert names == {"lookup_order", "third"}
    assert w.err("delete_tool", {"session_id": s, "name": "refund"})["type"] == "not_found"
    assert w.err("delete_tool", {"session_id": "reg-no-such-session", "name": "third"})[
        "type"] == "not_found"
    w.assert_clean()


def test_register_tools_default_session(w: Host) -> None:
    r = w.ok("register_tools", {"tools": [{"name": "dflt_tool", "description": "d"}]})
    assert r["session_id"] == "default", r
    for args in ({}, {"session_id": "default"}):
        listed = w.ok("list_tools", args)
        assert listed["session_id"] == "default", listed
        assert "dflt_tool" in {t["name"] for t in listed["tools"]}, listed
    r = w.ok("delete_tool", {"name": "dflt_tool"})
    assert r["deleted"] is True and r["session_id"] == "default", r
    assert "dflt_tool" not in {t["name"] for t in w.ok("list_tools", {})["tools"]}


BAD_NAMES = ["", "9lives", "has-dash", "has space", "dot.name", "x" * 65, "finish", 5,
             None, ["a"], "tab\t"]


@pytest.mark.parametrize("name", BAD_NAMES, ids=[repr(n)[:20] for n in BAD_NAMES])
def test_bad_tool_names_refused(w: Host, name: Any) -> None:
    e = w.err("register_tools", {"session_id": "reg-bad", "tools": [{"name": "fine_one"},
                                                                    {"name": name}]})
    assert e["type"] == "invalid_args", e
    assert names_field(e, "tools.1.name"), e


def test_good_tool_names_accepted(w: Host) -> None:
    names = ["_", "_x", "A", "a" * 64, "Z9_z", "lookup_order2"]
    r = w.ok("register_tools", {"session_id": "reg-good",
                                "tools": [{"name": n} for n in names]})
    assert r["registered"] == names and r["tools"] == len(names), r


def test_description_bounds(w: Host) -> None:
    r = w.ok("register_tools", {"session_id": "reg-desc",
                                "tools": [{"name": "d", "description": "x" * 8192}]})
    assert r["registered"] == ["d"], r
    e = w.err("register_tools", {"session_id": "reg-desc",
                                 "tools": [{"name": "d2", "description": "x" * 8193}]})
    assert e["type"] == "invalid_args" and names_field(e, "tools.0.description"), e
    e = w.err("register_tools", {"session_id": "reg-desc",
                                 "tools": [{"name": "d3", "description": 5}]})
    assert e["type"] == "invalid_args" and names_field(e, "tools.0.description"), e


BAD_PARAMETERS = [
    {"type": "string"},
    {"type": "array", "items": {"type": "string"}},
    {"type": "integer"},
    {"type": "object", "properties": {"x": {"type": "no-such-type"}}},
    {"type": 7},
    {"type": "object", "required": "x"},
    {"type": "object", "properties": []},
    "object",
    [],
    5,
]


@pytest.mark.parametrize("parameters", BAD_PARAMETERS, ids=[repr(p)[:40] for p in BAD_PARAMETERS])
def test_parameters_must_be_an_object_schema(w: Host, parameters: Any) -> None:
    e = w.err("register_tools", {"session_id": "reg-params",
                                 "tools": [{"name": "t", "parameters": parameters}]})
    assert e["type"] == "invalid_args", e
    assert names_field(e, "tools.0.parameters"), e


def test_good_parameters_accepted(w: Host) -> None:
    good = [
        {"type": "object"},
        {"type": "object", "properties": {}},
        {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0},
                                          "tags": {"type": "array",
                                                   "items": {"type": "string"}}},
         "required": ["n"], "additionalProperties": False},
    ]
    r = w.ok("register_tools", {"session_id": "reg-params-ok", "tools": [
        {"name": f"t{i}", "parameters": p} for i, p in enumerate(good)]})
    assert r["tools"] == len(good), r
    by_name = {t["name"]: t for t in w.ok("list_tools", {"session_id": "reg-params-ok"})["tools"]}
    assert by_name["t2"]["parameters"] == good[2], by_name


BAD_REGISTER_ARGS = [
    ({"session_id": "reg-args"}, "tools"),
    ({"session_id": "reg-args", "tools": "lookup"}, "tools"),
    ({"session_id": "reg-args", "tools": ["lookup"]}, "tools.0"),
    ({"session_id": "reg-args", "tools": [{"description": "no name"}]}, "tools.0.name"),
    ({"session_id": "reg-args", "tools": [{"name": "a", "desc": "typo"}]}, "tools.0"),
    ({"session_id": "reg-args", "tools": [{"name": "a"}], "bogus": 1}, "bogus"),
    ({"session_id": "", "tools": [{"name": "a"}]}, "session_id"),
]


@pytest.mark.parametrize("args,field", BAD_REGISTER_ARGS,
                         ids=[f"{i}-{f}" for i, (_, f) in enumerate(BAD_REGISTER_ARGS)])
def test_register_tools_arguments_validated(w: Host, args: dict[str, Any], field: str) -> None:
    e = w.err("register_tools", args)
    assert e["type"] == "invalid_args", e
    assert names_field(e, field), e


def test_list_and_delete_tool_arguments_validated(w: Host) -> None:
    e = w.err("list_tools", {"session_id": "x", "bogus": 1})
    assert e["type"] == "invalid_args", e
    e = w.err("delete_tool", {"session_id": "x"})
    assert e["type"] == "invalid_args" and names_field(e, "name"), e


def test_max_tools_per_session(w: Host) -> None:
    s = "reg-limit"
    r = w.ok("register_tools", {"session_id": s,
                                "tools": [{"name": f"t{i}"} for i in range(128)]})
    assert r["tools"] == 128, r
    e = w.err("register_tools", {"session_id": s, "tools": [{"name": "t128"}]})
    assert e["type"] == "limit_exceeded", e
    assert (e.get("details") or {}).get("limit") == "max_tools", e
    # replacing an existing name is not a new function
    r = w.ok("register_tools", {"session_id": s, "tools": [{"name": "t0", "description": "v2"}]})
    assert r["tools"] == 128, r
    w.ok("delete_tool", {"session_id": s, "name": "t5"})
    r = w.ok("register_tools", {"session_id": s, "tools": [{"name": "t128"}]})
    assert r["tools"] == 128, r


def test_more_than_128_tools_in_one_call_is_the_session_limit(w: Host) -> None:
    e = w.err("register_tools", {"session_id": "reg-limit2",
                                 "tools": [{"name": f"t{i}"} for i in range(129)]})
    assert e["type"] == "limit_exceeded", e
    assert (e.get("details") or {}).get("limit") == "max_tools", e


def test_tools_are_per_session_and_go_with_the_session(w: Host) -> None:
    w.ok("configure_lm", mock_lm("iso-a", ["x"]))
    w.ok("register_tools", {"session_id": "iso-a", "tools": [LOOKUP]})
    r = w.request("list_tools", {"session_id": "iso-b"})
    if r["success"]:
        assert r["result"]["tools"] == [], r
    else:
        assert r["error"]["type"] == "not_found", r
    e = w.err("create_program", {"session_id": "iso-b", "signature": "question -> answer",
                                 "program_type": "react",
                                 "options": {"tools": ["lookup_order"]}})
    assert e["type"] == "invalid_args" and names_field(e, "options.tools.0"), e

    w.ok("end_session", {"session_id": "iso-a"})
    r = w.request("list_tools", {"session_id": "iso-a"})
    if r["success"]:
        assert r["result"]["tools"] == [], f"tools outlived end_session: {r}"
    else:
        assert r["error"]["type"] == "not_found", r
    e = w.err("create_program", {"session_id": "iso-a", "signature": "question -> answer",
                                 "program_type": "react",
                                 "options": {"tools": ["lookup_order"]}})
    assert e["type"] == "invalid_args" and names_field(e, "options.tools.0"), e


def test_ready_lists_the_new_commands(w: Host) -> None:
    cmds = set(w.ready.get("commands") or [])
    missing = {"register_tools", "list_tools", "delete_tool", "callback_reply"} - cmds
    assert not missing, f"ready.commands lacks {missing}"


def _stored(h: Host, s: str) -> int:
    sessions = h.ok("list_sessions", {"session_id": s})["sessions"]
    assert len(sessions) == 1, sessions
    return sessions[0]["stored_bytes"]


def test_tools_count_to_the_session_stored_bytes(w: Host) -> None:
    s = "reg-bytes"
    w.ok("configure_lm", mock_lm(s, ["x"]))
    before = _stored(w, s)
    w.ok("register_tools", {"session_id": s,
                            "tools": [{"name": "big", "description": "d" * 8000}]})
    during = _stored(w, s)
    assert during >= before + 8000, (before, during)
    w.ok("delete_tool", {"session_id": s, "name": "big"})
    assert _stored(w, s) < during, "deleting a tool gives its bytes back"


def test_tools_are_held_to_max_session_bytes() -> None:
    h = Host("--max-session-bytes", "20000")
    try:
        s = "small"
        h.ok("register_tools", {"session_id": s,
                                "tools": [{"name": "a", "description": "d" * 8000}]})
        e = h.err("register_tools", {"session_id": s, "tools": [
            {"name": "b", "description": "d" * 8000}, {"name": "c", "description": "d" * 8000}]})
        assert e["type"] == "limit_exceeded", e
        assert (e.get("details") or {}).get("limit") == "max_session_bytes", e
        h.assert_clean()
    finally:
        h.stop()


# ==================================================================== program options
@pytest.fixture(scope="module")
def opt_session(w: Host) -> str:
    s = "opts"
    w.ok("register_tools", {"session_id": s, "tools": [LOOKUP, REFUND]
                            + [{"name": f"x{i}"} for i in range(40)]
                            + [{"name": "score"}]})
    return s


BAD_REACT_OPTIONS = [
    ({"tools": []}, "options.tools"),
    ({"tools": "lookup_order"}, "options.tools"),
    ({"tools": ["nope"]}, "options.tools.0"),
    ({"tools": ["lookup_order", "nope"]}, "options.tools.1"),
    ({"tools": ["finish"]}, "options.tools.0"),
    ({"tools": [f"x{i}" for i in range(33)]}, "options.tools"),
    ({"tools": ["lookup_order"], "max_iters": 0}, "options.max_iters"),
    ({"tools": ["lookup_order"], "max_iters": 101}, "options.max_iters"),
    ({"tools": ["lookup_order"], "max_iters": "5"}, "options.max_iters"),
    ({"tools": ["lookup_order"], "max_iters": True}, "options.max_iters"),
    ({"tools": ["lookup_order"], "bogus": 1}, "options.bogus"),
]


@pytest.mark.parametrize("options,field", BAD_REACT_OPTIONS,
                         ids=[f"{i}-{f}" for i, (_, f) in enumerate(BAD_REACT_OPTIONS)])
def test_react_options_validated(w: Host, opt_session: str, options: Any, field: str) -> None:
    e = w.err("create_program", {"session_id": opt_session, "signature": "question -> answer",
                                 "program_type": "react", "options": options})
    assert e["type"] == "invalid_args", e
    assert names_field(e, field), e


def test_react_options_accepted_at_the_bounds(w: Host, opt_session: str) -> None:
    for options in ({"tools": ["lookup_order"], "max_iters": 1},
                    {"tools": ["lookup_order", "refund"], "max_iters": 100},
                    {"tools": [f"x{i}" for i in range(32)]}):
        r = w.ok("create_program", {"session_id": opt_session, "signature": "question -> answer",
                                    "program_type": "react", "options": options})
        assert r["program_type"] == "react", r


def test_options_refused_for_predict(w: Host, opt_session: str) -> None:
    e = w.err("create_program", {"session_id": opt_session, "signature": "question -> answer",
                                 "options": {"tools": ["lookup_order"]}})
    assert e["type"] == "invalid_args" and names_field(e, "options"), e


BUILTIN = {"metric": "exact_match", "expected": "x"}
BAD_BON_OPTIONS = [
    ({"n": 0, "reward": BUILTIN}, "options.n"),
    ({"n": 21, "reward": BUILTIN}, "options.n"),
    ({"n": "3", "reward": BUILTIN}, "options.n"),
    ({"module": "react", "reward": BUILTIN}, "options.module"),
    ({"reward": {"metric": "no_such_metric"}}, "options.reward"),
    ({"reward": {**BUILTIN, "bogus": 1}}, "options.reward"),
    ({"reward": {"metric": "exact_match", "field": "nope"}}, "options.reward"),
    ({"reward": {"metric": {"name": "exact_match", "bogus": 1}}}, "options.reward"),
    ({"reward": {"metric": {"field": "answer"}}}, "options.reward"),
    ({"reward": BUILTIN, "threshold": "high"}, "options.threshold"),
    ({"reward": BUILTIN, "threshold": math.nan}, "options.threshold"),
    ({"reward": BUILTIN, "bogus": 1}, "options.bogus"),
]


@pytest.mark.parametrize("program_type", ["best_of_n", "refine"])
@pytest.mark.parametrize("options,field", BAD_BON_OPTIONS,
                         ids=[f"{i}-{f}" for i, (_, f) in enumerate(BAD_BON_OPTIONS)])
def test_best_of_n_options_validated(w: Host, opt_session: str, program_type: str,
                                     options: Any, field: str) -> None:
    e = w.err("create_program", {"session_id": opt_session, "signature": "question -> answer",
                                 "program_type": program_type, "options": options})
    assert e["type"] == "invalid_args", e
    assert names_field(e, field), e


@pytest.mark.parametrize("program_type", ["best_of_n", "refine"])
def test_builtin_reward_metric_forms_accepted(w: Host, opt_session: str,
                                              program_type: str) -> None:
    """`reward: {metric, expected?}`, `metric` a name or `{name, field?, ...options}`."""
    for reward in ({"metric": "exact_match", "expected": "x"},
                   {"metric": {"name": "exact_match", "field": "answer"}, "expected": "x"},
                   {"metric": {"name": "f1", "field": "answer"}},
                   {"metric": {"name": "contains"}, "expected": "x"},
                   {"metric": "json_field"}):
        r = w.ok("create_program", {"session_id": opt_session,
                                    "signature": "question -> answer",
                                    "program_type": program_type,
                                    "options": {"reward": reward}})
        assert r["program_type"] == program_type, r


def test_best_of_n_options_accepted(w: Host, opt_session: str) -> None:
    for options in ({"n": 1, "reward": BUILTIN}, {"n": 20, "reward": BUILTIN},
                    {"module": "chain_of_thought", "reward": {"function": "score"},
                     "threshold": 0.5, "fail_count": 1}):
        for program_type in ("best_of_n", "refine"):
            r = w.ok("create_program", {"session_id": opt_session,
                                        "signature": "question -> answer",
                                        "program_type": program_type, "options": options})
            assert r["program_type"] == program_type, r


# ================================================================== react + tool callbacks
def test_react_calls_two_tools_in_order(fresh: Host) -> None:
    h = fresh
    s = "acme"
    react_setup(h, s, [
        step("Look the order up.", "lookup_order", {"order_id": "A-17"}),
        step("Refund it.", "refund", {"order_id": "A-17", "amount": 5}),
        step("Done.", "finish", {}),
        final("It has shipped; 5 refunded.", "The order shipped and was refunded."),
    ])
    h.send({"id": 7, "command": "execute_program", "timeout_ms": 60000,
            "args": {"session_id": s, "program_id": "agent",
                     "inputs": {"question": "Where is order A-17?"}}})
    cb1 = h.wait_callback(7)
    check_callback_event(cb1, rid=7, session=s, function="lookup_order", purpose="tool",
                         args={"order_id": "A-17"})
    assert cb1["callback_id"] == "cb-1", f"first callback of a fresh worker: {cb1}"
    assert cb1["timeout_ms"] <= 60000, cb1
    # ReAct needs the first observation before it can choose the second tool
    assert len(h.callbacks(7)) == 1 and not h.has_reply(7)
    r = h.ok("ping", timeout=30)
    assert r["status"] == "ok", r
    h.answer("cb-1", {"status": "shipped"})

    cb2 = h.wait_callback(7, 2)
    check_callback_event(cb2, rid=7, session=s, function="refund", purpose="tool",
                         args={"order_id": "A-17", "amount": 5})
    assert cb2["callback_id"] == "cb-2", cb2
    h.answer("cb-2", "refunded 5")

    res = success(h, 7)
    assert res["outputs"] == {"reasoning": "The order shipped and was refunded.",
                              "answer": "It has shipped; 5 refunded."}, res
    assert list(res["outputs"]) == ["reasoning", "answer"], res["outputs"]
    traj = steps(res)
    got = [{k: st[k] for k in ("thought", "tool_name", "tool_args", "observation")}
           for st in traj]
    assert got == [
        {"thought": "Look the order up.", "tool_name": "lookup_order",
         "tool_args": {"order_id": "A-17"}, "observation": {"status": "shipped"}},
        {"thought": "Refund it.", "tool_name": "refund",
         "tool_args": {"order_id": "A-17", "amount": 5}, "observation": "refunded 5"},
        {"thought": "Done.", "tool_name": "finish", "tool_args": {},
         "observation": "Completed."},
    ], traj
    assert res["lm"] == "mock" and res["lm_source"] == "session", res
    assert h.abandoned() == [], h.abandoned()
    h.check_callback_order(7)
    h.assert_clean()


def test_react_tool_error_becomes_observation(w: Host) -> None:
    s = "react-err"
    react_setup(w, s, [step("Look it up.", "lookup_order", {"order_id": "A-99"}),
                       step("Give up.", "finish", {}), final("No such order.")])
    rid = execute(w, s)
    cb = w.wait_callback(rid)
    check_callback_event(cb, rid=rid, session=s, function="lookup_order", purpose="tool",
                         args={"order_id": "A-99"})
    w.answer(cb["callback_id"], error={"message": "no order A-99", "type": "lookup_failed",
                                       "retryable": False})
    res = success(w, rid)
    traj = steps(res)
    assert len(traj) == 2, traj
    obs = traj[0]["observation"]
    assert isinstance(obs, str) and obs.startswith(ERROR_PREFIX.format("lookup_order")), obs
    assert "no order A-99" in obs, obs
    assert res["outputs"]["answer"] == "No such order.", res
    w.check_callback_order(rid)
    w.assert_clean()


BAD_TOOL_ARGS = [{"order_id": 17}, {}, {"order_id": "A-1", "extra": 1}, {"order_id": None}]


@pytest.mark.parametrize("bad", BAD_TOOL_ARGS, ids=["wrong_type", "missing_required",
                                                    "additional_property", "nil"])
def test_react_args_violating_the_schema_send_no_callback(w: Host, bad: dict[str, Any]) -> None:
    s = f"react-schema-{BAD_TOOL_ARGS.index(bad)}"
    react_setup(w, s, [step("Try it.", "lookup_order", bad), step("Stop.", "finish", {}),
                       final("Could not look it up.")])
    rid = execute(w, s)
    res = success(w, rid)
    assert w.callbacks(rid) == [], f"a callback was sent for bad args: {w.callbacks(rid)}"
    traj = steps(res)
    assert len(traj) == 2, traj
    assert traj[0]["tool_name"] == "lookup_order" and traj[0]["tool_args"] == bad, traj
    obs = traj[0]["observation"]
    assert isinstance(obs, str) and obs.strip(), f"the observation must name the problem: {obs!r}"
    assert res["outputs"]["answer"] == "Could not look it up.", res
    w.assert_clean()


def test_react_tool_deleted_after_create_sends_no_callback(w: Host) -> None:
    s = "react-undeclared"
    react_setup(w, s, [step("Try it.", "lookup_order", {"order_id": "A-1"}),
                       step("Stop.", "finish", {}), final("Unavailable.")])
    w.ok("delete_tool", {"session_id": s, "name": "lookup_order"})
    rid = execute(w, s)
    res = success(w, rid)
    assert w.callbacks(rid) == [], "a callback was sent for a function no longer declared"
    traj = steps(res)
    assert traj[0]["tool_name"] == "lookup_order", traj
    obs = traj[0]["observation"]
    assert isinstance(obs, str) and obs.strip(), obs
    w.assert_clean()


def test_callback_timeout_ms_field(w: Host) -> None:
    s = "react-cbto"
    seq = [step("a", "lookup_order", {"order_id": "1"}), step("b", "finish", {}), final("x")]
    react_setup(w, s, seq + seq)
    rid = execute(w, s)  # no timeout_ms: the callback waits --callback-timeout-ms (60000)
    cb = w.wait_callback(rid)
    assert cb["timeout_ms"] == 60000, cb
    w.answer(cb["callback_id"], "ok")
    success(w, rid)
    rid = execute(w, s, timeout_ms=30000)  # the request's time left, at most 60000
    cb = w.wait_callback(rid)
    assert isinstance(cb["timeout_ms"], int) and 0 < cb["timeout_ms"] <= 30000, cb
    w.answer(cb["callback_id"], "ok")
    success(w, rid)
    w.assert_clean()


def test_callback_in_the_default_session(w: Host) -> None:
    w.ok("register_tools", {"tools": [{"name": "dflt_lookup"}]})
    w.ok("configure_lm", mock_lm("default", [step("a", "dflt_lookup", {}),
                                             step("b", "finish", {}), final("y")]))
    w.ok("create_program", {"program_id": "dflt-agent", "signature": "question -> answer",
                            "program_type": "react", "options": {"tools": ["dflt_lookup"]}})
    rid = w.start("execute_program", {"program_id": "dflt-agent", "inputs": {"question": "q"}})
    cb = w.wait_callback(rid)
    check_callback_event(cb, rid=rid, session="default", function="dflt_lookup",
                         purpose="tool", args={})
    w.answer(cb["callback_id"], {"found": True})
    res = success(w, rid)
    assert steps(res)[0]["observation"] == {"found": True}, res
    w.ok("delete_tool", {"name": "dflt_lookup"})


TOOL_RESULTS = ["text", 5, 1.5, None, True, {"a": [1, {"b": 2}]}, [], ["x", "y"],
                [1, 2, 3], [1.5], [None, "x"], [True], [{"a": 1}], [[1, 2], "z"]]


@pytest.mark.parametrize("index", range(len(TOOL_RESULTS)),
                         ids=[repr(v)[:20] for v in TOOL_RESULTS])
def test_tool_result_of_any_shape_is_the_observation(w: Host, index: int) -> None:
    """`result` is any value; a tool's observation is the host's result."""
    value = TOOL_RESULTS[index]
    s = f"react-result-{index}"
    react_setup(w, s, [step("Look.", "lookup_order", {"order_id": "A-5"}),
                       step("Done.", "finish", {}), final("seen")])
    rid = execute(w, s)
    cb = w.wait_callback(rid)
    w.answer(cb["callback_id"], value)
    res = success(w, rid)
    assert steps(res)[0]["observation"] == value, res
    assert res["outputs"]["answer"] == "seen", res


# ======================================================================= callback_reply
def test_callback_reply_never_issued_id_is_not_found(w: Host) -> None:
    for cid in ("cb-999999999", "nope", "cb-0"):
        for kw in ({"result": 1}, {"error": {"message": "x"}}):
            r = w.callback_reply(cid, **kw)
            assert r["success"] is False and r["error"]["type"] == "not_found", (cid, r)
    w.assert_clean()


def _react_waiting(h: Host, s: str) -> tuple[Any, dict[str, Any]]:
    react_setup(h, s, [step("Look.", "lookup_order", {"order_id": "A-5"}),
                       step("Done.", "finish", {}), final("fine")])
    rid = execute(h, s)
    return rid, h.wait_callback(rid)


def test_callback_reply_both_or_neither_is_invalid_and_the_callback_still_waits(w: Host) -> None:
    rid, cb = _react_waiting(w, "reply-both")
    cid = cb["callback_id"]
    r = w.callback_reply(cid, result={"a": 1}, error={"message": "x"})
    assert r["success"] is False and r["error"]["type"] == "invalid_args", r
    r = w.callback_reply(cid)
    assert r["success"] is False and r["error"]["type"] == "invalid_args", r
    assert not w.has_reply(rid) and w.abandoned(cid) == []
    w.answer(cid, {"status": "proper"})
    res = success(w, rid)
    assert steps(res)[0]["observation"] == {"status": "proper"}, res
    w.check_callback_order(rid)
    w.assert_clean()


def test_callback_reply_other_invalid_forms_leave_it_waiting(w: Host) -> None:
    rid, cb = _react_waiting(w, "reply-invalid")
    cid = cb["callback_id"]
    bad: list[dict[str, Any]] = [
        {"callback_id": cid, "result": 1, "bogus": 2},
        {"callback_id": cid, "error": {}},
        {"callback_id": cid, "error": {"message": 5}},
        {"callback_id": cid, "error": {"message": "m", "retryable": "yes"}},
        {"callback_id": cid, "error": {"message": "x" * 8193}},
        {"callback_id": cid, "error": {"message": "m", "type": "t" * 101}},
        {"callback_id": cid, "error": {"message": "m", "bogus": 1}},
        {"callback_id": cid, "error": "boom"},
        {"result": 1},
        {"callback_id": 5, "result": 1},
    ]
    for args in bad:
        r = w.request("callback_reply", args)
        assert r["success"] is False and r["error"]["type"] == "invalid_args", (args, r)
    assert not w.has_reply(rid) and w.abandoned(cid) == []
    w.answer(cid, error={"message": "y" * 8192, "type": "t" * 100})
    res = success(w, rid)
    obs = steps(res)[0]["observation"]
    assert isinstance(obs, str) and obs.startswith(ERROR_PREFIX.format("lookup_order")), obs
    assert "y" * 200 in obs, obs[:300]
    w.assert_clean()


def test_callback_answered_twice_is_not_waiting(w: Host) -> None:
    rid, cb = _react_waiting(w, "reply-twice")
    w.answer(cb["callback_id"], "first")
    assert_not_waiting(w, cb["callback_id"])
    res = success(w, rid)
    assert steps(res)[0]["observation"] == "first", res
    assert_not_waiting(w, cb["callback_id"])
    w.assert_clean()


def _waiting_on(h: Host, s: str, purpose: str,
                timeout_ms: int | None = None) -> tuple[Any, dict[str, Any]]:
    """A request of session s waiting on its first callback of the given purpose."""
    if purpose == "tool":
        react_setup(h, s, [step("Look.", "lookup_order", {"order_id": "A-5"}),
                           step("Done.", "finish", {}), final("fine")])
        rid = execute(h, s, timeout_ms=timeout_ms)
    elif purpose == "reward":
        reward_setup(h, s, ["a1", "a2", "a3"])
        rid = execute(h, s, "p", "q?", timeout_ms=timeout_ms)
    else:
        generator_setup(h, s)
        rid = execute(h, s, "p", "q?", timeout_ms=timeout_ms)
    cb = h.wait_callback(rid)
    assert cb["purpose"] == purpose, cb
    return rid, cb


PURPOSES = ["tool", "reward", "mock"]


@pytest.mark.parametrize("purpose", PURPOSES)
def test_request_timeout_abandons_the_callback_before_the_timeout_response(
        w: Host, purpose: str) -> None:
    # The precondition is a callback outstanding when timeout_ms ends; on a very loaded
    # box the request might time out before it asks, so the budget grows until it asks.
    for budget in (8000, 20000, 45000):
        s = f"timeout-{purpose}-{budget}"
        try:
            rid, cb = _waiting_on(w, s, purpose, timeout_ms=budget)
            break
        except AssertionError as exc:
            if "answered before callback" not in str(exc) or "'timeout'" not in str(exc):
                raise
    else:
        pytest.fail("the request never reached its callback before timing out")
    assert 0 < cb["timeout_ms"] <= budget, cb
    err = failure(w, rid, "timeout")  # never answered
    assert err["retryable"] is True, err
    check_abandoned(w, cb, rid, "timeout")
    assert_not_waiting(w, cb["callback_id"])
    w.check_callback_order(rid)
    w.assert_clean()


@pytest.mark.parametrize("purpose", PURPOSES)
def test_cancel_abandons_the_callback_before_the_cancelled_response(
        w: Host, purpose: str) -> None:
    rid, cb = _waiting_on(w, f"cancel-{purpose}", purpose)
    assert w.ok("cancel", {"request_id": rid}) == {"cancelled": True}
    failure(w, rid, "cancelled")
    check_abandoned(w, cb, rid, "cancelled")
    assert_not_waiting(w, cb["callback_id"])
    w.check_callback_order(rid)
    w.assert_clean()


# ================================================================= --callback-timeout-ms
def test_tool_callback_timeout_becomes_an_error_observation(cbt: Host) -> None:
    s = "cbt-tool"
    react_setup(cbt, s, [step("Look.", "lookup_order", {"order_id": "A-5"}),
                         step("Done.", "finish", {}), final("timed out")])
    rid = execute(cbt, s)
    cb = cbt.wait_callback(rid)
    assert cb["timeout_ms"] == 1500, cb
    res = success(cbt, rid)  # never answered: the agent goes on
    check_abandoned(cbt, cb, rid, "callback_timeout")
    traj = steps(res)
    assert len(traj) == 2, traj
    obs = traj[0]["observation"]
    assert isinstance(obs, str) and obs.startswith(ERROR_PREFIX.format("lookup_order")), obs
    assert "did not answer within 1500 ms" in obs, obs
    assert res["outputs"]["answer"] == "timed out", res
    assert_not_waiting(cbt, cb["callback_id"])
    cbt.check_callback_order(rid)
    cbt.assert_clean()


def test_callback_timeout_caps_the_request_time_left(cbt: Host) -> None:
    s = "cbt-cap"
    react_setup(cbt, s, [step("Look.", "lookup_order", {"order_id": "A-5"}),
                         step("Done.", "finish", {}), final("ok")])
    rid = execute(cbt, s, timeout_ms=120000)
    cb = cbt.wait_callback(rid)
    assert cb["timeout_ms"] == 1500, cb
    res = success(cbt, rid)  # unanswered: the callback's own 1.5 s end it, not the request's
    check_abandoned(cbt, cb, rid, "callback_timeout")
    assert "did not answer within 1500 ms" in steps(res)[0]["observation"], res


def test_mock_generator_callback_timeout_is_host_error(cbt: Host) -> None:
    s = "cbt-gen"
    generator_setup(cbt, s)
    rid = execute(cbt, s, "p", "q?")
    first = cbt.wait_callback(rid)
    err = cbt.serve(rid, lambda cb: None)["error"]  # never answer
    assert err["type"] == "host_error", err
    assert err["retryable"] is True, err
    d = host_error_details(err, reason="timeout", function="gen_fn", purpose="mock")
    if "callback_id" in d:
        assert d["callback_id"] in {c["callback_id"] for c in cbt.callbacks(rid)}, d
    check_abandoned(cbt, first, rid, "callback_timeout")
    cbt.check_callback_order(rid)
    cbt.assert_clean()


def test_reward_callback_timeout_is_host_error(cbt: Host) -> None:
    s = "cbt-reward"
    reward_setup(cbt, s, ["a1", "a2", "a3"])
    rid = execute(cbt, s, "p", "q?")
    first = cbt.wait_callback(rid)
    err = cbt.serve(rid, lambda cb: None)["error"]
    assert err["type"] == "host_error", err
    assert err["retryable"] is True, err
    host_error_details(err, reason="timeout", function="score", purpose="reward")
    check_abandoned(cbt, first, rid, "callback_timeout")
    cbt.check_callback_order(rid)
    cbt.assert_clean()


# ===================================================================== best_of_n / refine
def test_best_of_n_builtin_reward_with_expected_in_the_spec(w: Host) -> None:
    s = "bon-builtin"
    w.ok("configure_lm", mock_lm(s, ["a1", "a2", "a3"]))
    w.ok("create_program", {"session_id": s, "program_id": "p", "signature": "question -> answer",
                            "program_type": "best_of_n",
                            "options": {"n": 3, "reward": {"metric": "exact_match",
                                                           "expected": "a2"}}})
    rid = execute(w, s, "p", "q?")
    res = success(w, rid)
    assert res["outputs"] == {"answer": "a2"}, res
    assert w.callbacks(rid) == [], "a built-in reward needs no callback"
    w.assert_clean()


def test_best_of_n_builtin_reward_with_expected_in_the_call(w: Host) -> None:
    s = "bon-builtin-call"
    w.ok("configure_lm", mock_lm(s, ["a1", "a2", "a3"]))
    w.ok("create_program", {"session_id": s, "program_id": "p", "signature": "question -> answer",
                            "program_type": "best_of_n",
                            "options": {"n": 3, "reward": {"metric": "exact_match"}}})
    rid = execute(w, s, "p", "q?", expected={"answer": "a3"})
    res = success(w, rid)
    assert res["outputs"] == {"answer": "a3"}, res
    assert w.callbacks(rid) == []


def test_best_of_n_builtin_reward_metric_field_names_the_output(w: Host) -> None:
    s = "bon-builtin-field"
    w.ok("configure_lm", mock_lm(s, [{"answer": "a1", "note": "x"},
                                     {"answer": "a2", "note": "hit"},
                                     {"answer": "a3", "note": "x"}]))
    w.ok("create_program", {"session_id": s, "program_id": "p",
                            "signature": "question -> answer, note",
                            "program_type": "best_of_n",
                            "options": {"n": 3, "reward": {
                                "metric": {"name": "exact_match", "field": "note"},
                                "expected": "hit"}}})
    rid = execute(w, s, "p", "q?")
    res = success(w, rid)
    assert res["outputs"] == {"answer": "a2", "note": "hit"}, res


def test_best_of_n_host_reward_picks_the_best_attempt(w: Host) -> None:
    s = "bon-host"
    reward_setup(w, s, ["a1", "a2", "a3"])
    scores = {"a1": 0.2, "a2": 0.9, "a3": 0.5}  # none reaches the 1.0 threshold
    rid = execute(w, s, "p", "q?")

    def answer(cb: dict[str, Any]) -> Any:
        check_callback_event(cb, rid=rid, session=s, function="score", purpose="reward")
        a = cb["args"]
        assert a["inputs"] == {"question": "q?"}, cb
        assert set(a["outputs"]) == {"answer"} and a["outputs"]["answer"] in scores, cb
        return ("result", scores[a["outputs"]["answer"]])

    res = w.serve(rid, answer)
    assert res["success"] is True, res
    assert res["result"]["outputs"] == {"answer": "a2"}, res
    got = sorted(c["args"]["outputs"]["answer"] for c in w.callbacks(rid))
    assert got == ["a1", "a2", "a3"], got
    w.check_callback_order(rid)
    w.assert_clean()


def test_best_of_n_host_reward_at_threshold_is_taken_at_once(w: Host) -> None:
    s = "bon-threshold"
    reward_setup(w, s, ["a1", "a2", "a3"])
    rid = execute(w, s, "p", "q?")
    taken: list[str] = []

    def answer(cb: dict[str, Any]) -> Any:
        if taken:
            return None  # only the first attempt is scored
        taken.append(cb["args"]["outputs"]["answer"])
        return ("result", 1.0)

    res = w.serve(rid, answer)
    assert res["success"] is True, res
    assert res["result"]["outputs"] == {"answer": taken[0]}, (taken, res)
    for cb in w.callbacks(rid)[1:]:  # attempts the request outlived, if run alongside
        check_abandoned(w, cb, rid, "request_ended")
    w.check_callback_order(rid)


MALFORMED = ["high", math.nan, math.inf, -math.inf, {"score": 1.0}, [1.0], None]


@pytest.mark.parametrize("index", range(len(MALFORMED)),
                         ids=[repr(v)[:15] for v in MALFORMED])
def test_host_reward_that_is_not_a_finite_number_is_malformed(w: Host, index: int) -> None:
    value = MALFORMED[index]
    s = f"bon-malformed-{index}"
    reward_setup(w, s, ["a1", "a2", "a3"])
    rid = execute(w, s, "p", "q?")
    r = w.serve(rid, lambda cb: ("result", value))  # every attempt gets the same answer
    assert r["success"] is False and r["error"]["type"] == "host_error", r
    d = host_error_details(r["error"], reason="malformed", function="score", purpose="reward")
    if "callback_id" in d:
        assert d["callback_id"] in {c["callback_id"] for c in w.callbacks(rid)}, d
    w.check_callback_order(rid)
    w.assert_clean()


@pytest.mark.parametrize("retryable", [True, False])
def test_host_reward_error_fails_the_request(w: Host, retryable: bool) -> None:
    s = f"bon-error-{retryable}"
    reward_setup(w, s, ["a1", "a2", "a3"])
    rid = execute(w, s, "p", "q?")
    r = w.serve(rid, lambda cb: ("error", {"message": "scorer down",
                                           "type": "scorer_unavailable",
                                           "retryable": retryable}))
    assert r["success"] is False and r["error"]["type"] == "host_error", r
    assert r["error"]["retryable"] is retryable, r
    d = host_error_details(r["error"], reason="error", function="score", purpose="reward")
    assert d.get("host_error_type") == "scorer_unavailable", d
    if "callback_id" in d:
        assert d["callback_id"] in {c["callback_id"] for c in w.callbacks(rid)}, d
    w.check_callback_order(rid)
    w.assert_clean()


@pytest.mark.parametrize("program_type", ["best_of_n", "refine"])
@pytest.mark.parametrize("how", ["malformed", "error"])
def test_a_failed_reward_fails_the_call_without_going_on(w: Host, how: str,
                                                         program_type: str) -> None:
    """"A failed reward fails the call even though DSPy's BestOfN would count it as one
    failed attempt and go on": no attempt (no reward callback) after the failed one."""
    s = f"bon-no-go-on-{how}-{program_type}"
    reward_setup(w, s, ["a1", "a2", "a3"], program_type=program_type)
    rid = execute(w, s, "p", "q?")
    cb = w.wait_callback(rid)
    if how == "malformed":
        r = w.callback_reply(cb["callback_id"], result="not a number")
    else:
        r = w.callback_reply(cb["callback_id"], error={"message": "scorer down"})
    assert r["success"] is True and r["result"] == {"accepted": True}, r
    reply_seq = w.seq(r)

    def later(c: dict[str, Any]) -> Any:  # answer anything later with a top score
        return ("result", 1.0)

    resp = w.serve(rid, later)
    assert resp["success"] is False and resp["error"]["type"] == "host_error", resp
    host_error_details(resp["error"], reason=how, function="score", purpose="reward")
    after = [c for c in w.callbacks(rid) if w.seq(c) > reply_seq]
    assert after == [], f"attempts went on after the failed reward: {after}"
    w.check_callback_order(rid)


def test_host_reward_not_declared_is_unknown_function(w: Host) -> None:
    s = "bon-undeclared"
    reward_setup(w, s, ["a1", "a2", "a3"])
    w.ok("delete_tool", {"session_id": s, "name": "score"})
    rid = execute(w, s, "p", "q?")
    err = failure(w, rid, "host_error")
    host_error_details(err, reason="unknown_function", function="score", purpose="reward")
    assert w.callbacks(rid) == [], "no callback for an undeclared function"


def test_reward_callback_sees_the_chain_of_thought_outputs(w: Host) -> None:
    s = "bon-cot"
    attempt = {"reasoning": "Because.", "answer": "c1"}
    reward_setup(w, s, [attempt], module="chain_of_thought", n=1)
    rid = execute(w, s, "p", "q?")
    cb = w.wait_callback(rid)
    check_callback_event(cb, rid=rid, session=s, function="score", purpose="reward",
                         args={"inputs": {"question": "q?"}, "outputs": attempt})
    w.answer(cb["callback_id"], 1)
    res = success(w, rid)
    assert res["outputs"] == attempt, res
    assert list(res["outputs"]) == ["reasoning", "answer"], res


def test_refine_with_host_reward(w: Host) -> None:
    s = "refine-host"
    reward_setup(w, s, ["r1", "r2", "r3"], program_type="refine")
    rid = execute(w, s, "p", "q?")
    taken: list[str] = []

    def answer(cb: dict[str, Any]) -> Any:
        check_callback_event(cb, rid=rid, session=s, function="score", purpose="reward")
        if taken:
            return None
        taken.append(cb["args"]["outputs"]["answer"])
        return ("result", 1.0)

    res = w.serve(rid, answer)
    assert res["success"] is True, res
    assert taken == ["r1"], taken
    assert res["result"]["outputs"] == {"answer": "r1"}, res
    w.check_callback_order(rid)


# ======================================================================= mock generator
def test_mock_generator_asks_the_host_every_call(w: Host) -> None:
    s = "gen-predict"
    generator_setup(w, s)
    rid = execute(w, s, "p", "What is 2+2?")
    cb = w.wait_callback(rid)
    check_callback_event(cb, rid=rid, session=s, function="gen_fn", purpose="mock")
    a = cb["args"]
    assert {k: a.get(k) for k in ("model", "inputs", "outputs")} == {
        "model": "mock/gen", "inputs": {"question": "What is 2+2?"}, "outputs": ["answer"]}, cb
    assert isinstance(a.get("instructions"), str) and a["instructions"], cb
    assert a.get("demos") == 0, cb
    assert cb["timeout_ms"] == 60000, cb  # no request timeout: --callback-timeout-ms
    w.answer(cb["callback_id"], "4")
    res = success(w, rid)
    assert res["outputs"] == {"answer": "4"}, res
    w.check_callback_order(rid)

    rid2 = execute(w, s, "p", "What is 2+2?")  # same prompt: not cached, asks again
    cb2 = w.wait_callback(rid2)
    assert cb2["callback_id"] != cb["callback_id"], (cb, cb2)
    assert int(cb2["callback_id"][3:]) > int(cb["callback_id"][3:]), (cb, cb2)
    w.answer(cb2["callback_id"], {"answer": "5"})
    res = success(w, rid2)
    assert res["outputs"] == {"answer": "5"}, res
    w.check_callback_order(rid2)
    w.assert_clean()


def test_mock_generator_drives_a_react_program_with_tool_callbacks(w: Host) -> None:
    s = "gen-react"
    w.ok("register_tools", {"session_id": s, "tools": [{"name": "gen_fn"}, LOOKUP]})
    w.ok("configure_lm", {"session_id": s, "model": "mock/gen", "num_retries": 0,
                          "extra": {"generator": "gen_fn"}})
    w.ok("create_program", {"session_id": s, "program_id": "agent",
                            "signature": "question -> answer", "program_type": "react",
                            "options": {"tools": ["lookup_order"], "max_iters": 4}})
    rid = execute(w, s, question="Where is A-3?")
    answers = iter([
        ("mock", step("Look.", "lookup_order", {"order_id": "A-3"})),
        ("tool", {"status": "lost"}),
        ("mock", step("Done.", "finish", {})),
        ("mock", final("It is lost.", "The lookup said so.")),
    ])
    purposes: list[str] = []

    def answer(cb: dict[str, Any]) -> Any:
        purpose, value = next(answers)
        purposes.append(cb["purpose"])
        assert cb["purpose"] == purpose, (purposes, cb)
        if purpose == "mock":
            check_callback_event(cb, rid=rid, session=s, function="gen_fn", purpose="mock")
            assert cb["args"]["model"] == "mock/gen", cb
            assert cb["args"]["inputs"].get("question") == "Where is A-3?", cb
            assert set(cb["args"]["outputs"]) == set(value), cb
        else:
            check_callback_event(cb, rid=rid, session=s, function="lookup_order",
                                 purpose="tool", args={"order_id": "A-3"})
        return ("result", value)

    r = w.serve(rid, answer)
    assert r["success"] is True, r
    assert purposes == ["mock", "tool", "mock", "mock"], purposes
    traj = steps(r["result"])
    assert traj[0]["observation"] == {"status": "lost"}, traj
    assert r["result"]["outputs"] == {"reasoning": "The lookup said so.",
                                      "answer": "It is lost."}, r
    w.check_callback_order(rid)
    w.assert_clean()


def test_mock_generator_sees_instructions_and_demo_count(w: Host) -> None:
    s = "gen-instr"
    generator_setup(w, s)
    w.ok("create_program", {"session_id": s, "program_id": "p2",
                            "signature": "question -> answer",
                            "instructions": "Answer in one word.",
                            "demos": [{"question": "1+1?", "answer": "2"},
                                      {"question": "2+3?", "answer": "5"}]})
    rid = execute(w, s, "p2", "q?")
    cb = w.wait_callback(rid)
    check_callback_event(cb, rid=rid, session=s, function="gen_fn", purpose="mock")
    assert cb["args"].get("instructions") == "Answer in one word.", cb
    assert cb["args"].get("demos") == 2, cb
    w.answer(cb["callback_id"], "x")
    assert success(w, rid)["outputs"] == {"answer": "x"}


def test_mock_generator_chain_of_thought(w: Host) -> None:
    s = "gen-cot"
    generator_setup(w, s, program_type="chain_of_thought")
    rid = execute(w, s, "p", "What is 2+2?")
    cb = w.wait_callback(rid)
    check_callback_event(cb, rid=rid, session=s, function="gen_fn", purpose="mock")
    assert cb["args"]["inputs"] == {"question": "What is 2+2?"}, cb
    assert set(cb["args"]["outputs"]) == {"reasoning", "answer"}, cb
    w.answer(cb["callback_id"], {"reasoning": "Two and two.", "answer": "4"})
    res = success(w, rid)
    assert res["outputs"] == {"reasoning": "Two and two.", "answer": "4"}, res
    assert list(res["outputs"]) == ["reasoning", "answer"], res


@pytest.mark.parametrize("error,retryable,etype", [
    ({"message": "generator down"}, False, "host_error"),
    ({"message": "over quota", "type": "quota", "retryable": True}, True, "quota"),
], ids=["defaults", "typed_retryable"])
def test_mock_generator_error_is_host_error(w: Host, error: dict[str, Any], retryable: bool,
                                            etype: str) -> None:
    s = f"gen-error-{etype}"
    generator_setup(w, s)
    rid = execute(w, s, "p", "q?")
    r = w.serve(rid, lambda cb: ("error", error))
    assert r["success"] is False and r["error"]["type"] == "host_error", r
    assert r["error"]["retryable"] is retryable, r
    d = host_error_details(r["error"], reason="error", function="gen_fn", purpose="mock")
    if "host_error_type" in d or etype != "host_error":
        assert d.get("host_error_type") == etype, d
    cbs = w.callbacks(rid)
    assert len(cbs) == 1, f"a failed callback fails the request; got {len(cbs)} callbacks"
    if "callback_id" in d:
        assert d["callback_id"] == cbs[0]["callback_id"], d
    w.check_callback_order(rid)
    w.assert_clean()


def test_mock_generator_answer_is_read_as_a_responses_value(w: Host) -> None:
    """`{"__raw__": text}` is the completion verbatim: unparseable text is lm_error."""
    s = "gen-raw"
    generator_setup(w, s)
    rid = execute(w, s, "p", "q?")
    r = w.serve(rid, lambda cb: ("result", {"__raw__": "no field markers at all"}))
    assert r["success"] is False and r["error"]["type"] == "lm_error", r
    assert (r["error"].get("details") or {}).get("reason") == "unparseable_answer", r
    w.check_callback_order(rid)


def test_mock_generator_not_declared_is_unknown_function(w: Host) -> None:
    s = "gen-undeclared"
    generator_setup(w, s)
    w.ok("delete_tool", {"session_id": s, "name": "gen_fn"})
    rid = execute(w, s, "p", "q?")
    err = failure(w, rid, "host_error")
    host_error_details(err, reason="unknown_function", function="gen_fn", purpose="mock")
    assert w.callbacks(rid) == [], "no callback for an undeclared function"


# ======================================================== evaluate_program host metric
def _eval_setup(h: Host, s: str) -> None:
    h.ok("register_tools", {"session_id": s, "tools": [{"name": "judge"}]})
    h.ok("configure_lm", {"session_id": s, "model": "mock", "num_retries": 0,
                          "extra": {"responses": {"q1": "a1", "q2": "a2", "q3": "a3"}}})
    h.ok("create_program", {"session_id": s, "program_id": "p",
                            "signature": "question -> answer"})


DEVSET = [{"question": "q1", "answer": "e1"}, {"question": "q2", "answer": "e2"},
          {"question": "q3", "answer": "e3"}]


def test_evaluate_with_a_host_metric(w: Host) -> None:
    s = "eval-host"
    _eval_setup(w, s)
    rid = w.start("evaluate_program", {"session_id": s, "program_id": "p", "devset": DEVSET,
                                       "metric": {"name": "host", "function": "judge"},
                                       "per_example": True})
    scores = {"q1": 1.0, "q2": 0.0, "q3": 0.5}

    def judge(cb: dict[str, Any]) -> Any:
        check_callback_event(cb, rid=rid, session=s, function="judge", purpose="metric")
        q = cb["args"]["inputs"]["question"]
        assert cb["args"] == {"field": "answer", "inputs": {"question": q},
                              "outputs": {"answer": "a" + q[1]},
                              "expected": "e" + q[1]}, cb
        return ("result", scores[q])

    r = w.serve(rid, judge)
    assert r["success"] is True, r
    res = r["result"]
    assert len(w.callbacks(rid)) == 3, "asked once per example"
    assert res["total"] == 3 and res["passed"] == 1, res
    assert math.isclose(res["score"], 0.5), res
    assert sorted(e["index"] for e in res["failed_examples"]) == [1, 2], res
    assert [e["score"] for e in res["per_example"]] == [1.0, 0.0, 0.5], res
    w.check_callback_order(rid)
    w.assert_clean()


BAD_METRIC_ANSWERS = [("error", {"message": "judge down"}, "error"),
                      ("result", 1.5, "malformed"), ("result", -0.1, "malformed"),
                      ("result", "high", "malformed"), ("result", math.nan, "malformed")]


@pytest.mark.parametrize("index", range(len(BAD_METRIC_ANSWERS)),
                         ids=[f"{a}-{v!r}"[:24] for a, v, _ in BAD_METRIC_ANSWERS])
def test_a_failed_host_metric_fails_that_example_only(w: Host, index: int) -> None:
    how, value, reason = BAD_METRIC_ANSWERS[index]
    s = f"eval-bad-{index}"
    _eval_setup(w, s)
    rid = w.start("evaluate_program", {"session_id": s, "program_id": "p", "devset": DEVSET,
                                       "metric": {"name": "host", "function": "judge"},
                                       "per_example": True})

    def judge(cb: dict[str, Any]) -> Any:
        if cb["args"]["inputs"]["question"] == "q2":
            return (how, value)
        return ("result", 1.0)

    r = w.serve(rid, judge)
    assert r["success"] is True, f"the evaluation goes on: {r}"
    res = r["result"]
    assert res["total"] == 3 and res["passed"] == 2, res
    failed = {e["index"]: e for e in res["failed_examples"]}
    assert set(failed) == {1}, res
    err = failed[1].get("error")
    assert isinstance(err, dict) and err.get("type") == "host_error", failed[1]
    assert failed[1]["score"] == 0 and failed[1]["passed"] is False, failed[1]
    host_error_details(err, reason=reason, function="judge", purpose="metric")
    w.check_callback_order(rid)
    w.assert_clean()


def test_host_metric_callback_timeout_fails_that_example(cbt: Host) -> None:
    s = "cbt-eval"
    _eval_setup(cbt, s)
    rid = cbt.start("evaluate_program", {"session_id": s, "program_id": "p",
                                         "devset": DEVSET[:2],
                                         "metric": {"name": "host", "function": "judge"}})
    r = cbt.serve(rid, lambda cb: None if cb["args"]["inputs"]["question"] == "q2"
                  else ("result", 1.0))
    assert r["success"] is True, r
    failed = {e["index"]: e for e in r["result"]["failed_examples"]}
    assert set(failed) == {1}, r
    err = failed[1]["error"]
    assert err["type"] == "host_error" and err["retryable"] is True, err
    host_error_details(err, reason="timeout", function="judge", purpose="metric")
    q2 = [c for c in cbt.callbacks(rid) if c["args"]["inputs"]["question"] == "q2"]
    check_abandoned(cbt, q2[0], rid, "callback_timeout")
    cbt.check_callback_order(rid)


def test_get_stats_counts_callbacks(fresh: Host) -> None:
    h = fresh
    st = h.ok("get_stats", {})
    assert st["callbacks"]["waiting"] == 0 and st["callbacks"]["issued"] == 0, st
    rid, cb = _react_waiting(h, "stats")
    st = h.ok("get_stats", {})
    assert st["callbacks"]["waiting"] == 1 and st["callbacks"]["issued"] == 1, st
    h.answer(cb["callback_id"], "ok")
    success(h, rid)
    st = h.ok("get_stats", {})
    assert st["callbacks"]["waiting"] == 0 and st["callbacks"]["issued"] == 1, st


# ==================================================================== liveness, concurrency
def test_callback_ids_are_unique_for_the_worker_life(w: Host) -> None:
    ids = [c["callback_id"] for c in w.all_callbacks()]
    assert ids, "the module's tests issued callbacks"
    assert len(set(ids)) == len(ids), "a callback id was issued twice"
    for cid in ids:
        assert isinstance(cid, str) and cid.startswith("cb-") and cid[3:].isdigit(), cid
        assert int(cid[3:]) >= 1 and str(int(cid[3:])) == cid[3:], cid


@pytest.mark.parametrize("value", ["abc", "-5", "1.5"])
def test_bad_callback_timeout_flag_exits_2_before_ready(value: str) -> None:
    proc = subprocess.run([PYTHON, "-P", "-m", "dspy_bridge", "--callback-timeout-ms", value],
                          input=b"", capture_output=True, timeout=WAIT, cwd=str(ROOT))
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-500:])
    assert proc.stdout == b"", "nothing (not even ready) is sent for bad flags"


def test_ping_and_stats_answered_while_callbacks_are_outstanding(w: Host) -> None:
    rid, cb = _react_waiting(w, "live-ping")
    for _ in range(3):
        p = w.ok("ping", timeout=30)
        assert p["status"] == "ok" and p["in_flight"] >= 1, p
    st = w.ok("get_stats", timeout=30)
    assert st["in_flight"] >= 1, st
    assert not w.has_reply(rid)
    w.answer(cb["callback_id"], "ok")
    success(w, rid)


def test_many_concurrent_requests_with_outstanding_callbacks(w: Host) -> None:
    s = "conc"
    n = 16
    w.ok("register_tools", {"session_id": s, "tools": [
        {"name": "echo_n", "parameters": {"type": "object",
                                          "properties": {"n": {"type": "integer"}},
                                          "required": ["n"]}}]})
    w.ok("create_program", {"session_id": s, "program_id": "agent",
                            "signature": "question -> answer", "program_type": "react",
                            "options": {"tools": ["echo_n"], "max_iters": 3}})
    rids = []
    for i in range(n):
        lm = mock_lm(s, [step(f"t{i}", "echo_n", {"n": i}), step("done", "finish", {}),
                         final(f"ans-{i}")])
        lm.pop("session_id")
        rids.append(execute(w, s, question=f"q{i}", lm=lm, id=f"conc-{i}"))
    cbs = [w.wait_callback(rid) for rid in rids]  # all outstanding at once
    assert not any(w.has_reply(r) for r in rids)
    assert len({c["callback_id"] for c in cbs}) == n, cbs
    for i, cb in enumerate(cbs):
        check_callback_event(cb, rid=rids[i], session=s, function="echo_n", purpose="tool",
                             args={"n": i})
    assert w.ok("ping", timeout=30)["in_flight"] >= n
    for i in reversed(range(n)):  # answered in any order
        if i % 3 == 0:
            w.answer(cbs[i]["callback_id"], error={"message": f"fail-{i}"})
        else:
            w.answer(cbs[i]["callback_id"], {"n": i, "tag": f"r{i}"})
    for i, rid in enumerate(rids):
        res = success(w, rid)
        obs = steps(res)[0]["observation"]
        if i % 3 == 0:
            assert isinstance(obs, str) and f"fail-{i}" in obs, (i, obs)
            assert obs.startswith(ERROR_PREFIX.format("echo_n")), obs
        else:
            assert obs == {"n": i, "tag": f"r{i}"}, (i, obs)
        assert res["outputs"]["answer"] == f"ans-{i}", (i, res)
        assert res["lm_source"] == "call", res
        w.check_callback_order(rid)
    w.assert_clean()


def test_callback_reply_is_not_refused_by_the_in_flight_limit() -> None:
    h = Host("--max-in-flight", "1")
    try:
        rid, cb = _react_waiting(h, "narrow")
        assert h.ok("ping", timeout=30)["status"] == "ok"
        other = execute(h, "narrow")
        e = failure(h, other, "limit_exceeded")
        assert e["retryable"] is True, e
        h.answer(cb["callback_id"], "through")
        res = success(h, rid)
        assert steps(res)[0]["observation"] == "through", res
        h.check_callback_order(rid)
        h.assert_clean()
    finally:
        h.stop()


def test_shutdown_grace_running_out_abandons_the_callback() -> None:
    h = Host()
    try:
        rid, cb = _react_waiting(h, "shut-out")
        r = h.ok("shutdown", {"grace_ms": 1000})
        assert r["shutting_down"] is True, r
        failure(h, rid, "shutting_down")
        check_abandoned(h, cb, rid, "shutting_down")
        h.check_callback_order(rid)
        assert h.proc.wait(timeout=WAIT) == 0
        h.assert_clean()
    finally:
        h.stop()


def test_callback_answered_within_the_shutdown_grace() -> None:
    h = Host()
    try:
        rid, cb = _react_waiting(h, "shut-in")
        r = h.ok("shutdown", {"grace_ms": 60000})
        assert r["shutting_down"] is True and r["in_flight"] >= 1, r
        h.answer(cb["callback_id"], "just in time")  # control commands serve in shutdown
        res = success(h, rid)
        assert steps(res)[0]["observation"] == "just in time", res
        assert h.abandoned() == []
        assert h.proc.wait(timeout=WAIT) == 0
        h.assert_clean()
    finally:
        h.stop()
