"""Issue item 1: a worker that stays alive must stay useful.

Black-box checks from PROTOCOL.md only (Lifecycle, engine_failed, cancel, Logs, --record,
Signatures, LM failures / "Providers are untrusted").
"""

from __future__ import annotations

import json
import string
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from .client import Worker, mock_session, names_field, pack

CONTROL = {"ping", "get_stats", "cancel", "shutdown", "callback_reply"}
TEST_ONLY = {"sleep", "echo", "fail", "stdout_noise"}


def _dspy_works(w: Worker, session: str = "after") -> None:
    """The engine must end up usable: configure, create, execute with the mock."""
    mock_session(w, session, "forty-two")
    w.ok("create_program", {"session_id": session, "program_id": "p",
                            "signature": "question -> answer"}, timeout=60)
    res = w.ok("execute_program", {"session_id": session, "program_id": "p",
                                   "inputs": {"question": "q?"}}, timeout=60)
    assert res["outputs"] == {"answer": "forty-two"}, res
    ping = w.ping()
    assert ping["status"] == "ok" and ping["engine"] == "ready", ping
    assert ping["dspy_loaded"] is True, ping


# --------------------------------------------------------------------------------------
# A request that gives up waiting for the engine load (timeout_ms: 1 or cancel) right
# after `ready` must not break the load for anyone.
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["timeout_1ms", "cancel", "many_give_up_one_waits"])
def test_giving_up_on_engine_load_right_after_ready_keeps_worker_useful(variant: str) -> None:
    with Worker() as w:
        if variant == "timeout_1ms":
            r = w.request("configure_lm", {"model": "mock"}, timeout_ms=1)
            assert r["success"] is True or r["error"]["type"] == "timeout", r
        elif variant == "cancel":
            w.send({"id": 100, "command": "configure_lm", "args": {"model": "mock"}})
            c = w.ok("cancel", {"request_id": 100}, id=101)
            r = w.wait_reply(100)
            if c["cancelled"] is True:
                assert r["success"] is False and r["error"]["type"] == "cancelled", r
            else:
                assert r["success"] is True, (c, r)
            assert w.reply_count(100) == 1
        else:
            # several DSPy commands give up (1 ms), one without timeout waits, a cancel too
            for i, cmd in enumerate(["configure_lm", "create_program", "list_sessions",
                                     "execute_program", "get_usage"]):
                args = {"configure_lm": {"model": "mock", "session_id": "x"},
                        "create_program": {"signature": "a -> b", "session_id": "x"},
                        "execute_program": {"program_id": "nope", "inputs": {}},
                        }.get(cmd, {})
                w.send({"id": f"give-up-{i}", "command": cmd, "args": args, "timeout_ms": 1})
            w.send({"id": "cancel-me", "command": "configure_lm", "args": {"model": "mock"}})
            w.send({"id": "waiter", "command": "configure_lm",
                    "args": {"model": "mock", "session_id": "waiter"}})
            w.ok("cancel", {"request_id": "cancel-me"})
            waiter = w.wait_reply("waiter", timeout=60)
            assert waiter["success"] is True, waiter
            for i in range(5):
                r = w.wait_reply(f"give-up-{i}")
                assert r["success"] is True or r["error"]["type"] in (
                    "timeout", "invalid_args", "not_found"), r
            w.wait_reply("cancel-me")
        ping = w.ping()
        assert ping["status"] == "ok", ping
        _dspy_works(w)
        w.assert_clean()


# --------------------------------------------------------------------------------------
# A failed engine load is a typed state: engine_failed event, ping says so, every DSPy
# command is engine_unavailable (retryable), control commands keep working, EOF exits.
# The broken installation is simulated by shadowing `dspy` on PYTHONPATH with a package
# whose import fails (a black-box way to break the install).
# --------------------------------------------------------------------------------------

DSPY_ARGS = {
    "configure_lm": {"model": "mock"},
    "create_program": {"signature": "question -> answer"},
    "execute_program": {"program_id": "p", "inputs": {"question": "q"}},
    "get_program": {"program_id": "p"},
    "list_programs": {},
    "delete_program": {"program_id": "p"},
    "list_sessions": {},
    "end_session": {"session_id": "s"},
    "export_program": {"program_id": "p"},
    "import_program": {"document": {"format": "dspy-bridge/program", "version": 1}},
    "get_usage": {},
    "reset_usage": {},
    "configure_cache": {},
}


@pytest.mark.parametrize("raise_stmt", [
    "raise ImportError('simulated broken installation')",
    "raise RuntimeError('simulated broken installation')",
    "raise SystemExit(3)",
])
def test_failed_engine_load_is_a_typed_state(tmp_path, raise_stmt: str) -> None:
    pkg = tmp_path / "shadow" / "dspy"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(raise_stmt + "\n")
    w = Worker(env={"PYTHONPATH": str(tmp_path / "shadow")})
    try:
        ev = w.wait_event("engine_failed", timeout=60)
        err = ev.get("error")
        assert isinstance(err, dict) and err.get("type") == "engine_unavailable", ev
        assert isinstance(err.get("message"), str) and err.get("retryable") is True, ev
        ping = w.ping()
        assert ping["status"] == "engine_failed" and ping["engine"] == "failed", ping
        assert ping["dspy_loaded"] is False, ping
        dspy_cmds = [c for c in w.ready["commands"] if c not in CONTROL | TEST_ONLY]
        assert dspy_cmds, w.ready
        wrong = []
        for cmd in dspy_cmds:
            r = w.request(cmd, DSPY_ARGS.get(cmd, {}))
            e = r.get("error") or {}
            if not (r["success"] is False and e.get("type") == "engine_unavailable"
                    and e.get("retryable") is True):
                wrong.append(f"{cmd} -> {r.get('result') or e}")
        assert not wrong, "DSPy commands not answered engine_unavailable:\n" + "\n".join(wrong)
        stats = w.ok("get_stats")
        assert stats["engine"] == "failed" and stats["dspy_loaded"] is False, stats
        assert w.ok("cancel", {"request_id": 12345}) == {"cancelled": False}
        assert w.ping()["status"] == "engine_failed"
        assert sum(1 for e in w.events if e.get("event") == "engine_failed") == 1
        w.assert_clean()
        w.close_stdin()
        rc = w.wait_exit(5)
        assert rc == 0, f"exit status {rc} after EOF (None: still running after 5 s)"
    finally:
        w.kill()


# --------------------------------------------------------------------------------------
# Nothing an observer (--record), logger or handler raises may cost a reply.
# --------------------------------------------------------------------------------------

TS = msgpack.Timestamp


class RawSplice:
    """Raw msgpack bytes to put in place of a value (for ext types msgpack-python cannot
    build, e.g. negative codes other than -1)."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw


def pack_spliced(m: object) -> bytes:
    raws: list[bytes] = []

    def default(o: object) -> object:
        if isinstance(o, RawSplice):
            raws.append(o.raw)
            return f"\x00SPLICE{len(raws) - 1}\x00"
        raise TypeError(type(o))

    data = msgpack.packb(m, use_bin_type=True, default=default)
    for i, raw in enumerate(raws):
        marker = pack(f"\x00SPLICE{i}\x00")
        assert data.count(marker) == 1
        data = data.replace(marker, raw)
    return data


def _hard_cases() -> list[tuple[str, bytes, object]]:
    """(name, payload, expected reply id; None means the reply's id is nil)."""
    cases: list[tuple[str, object, object]] = []

    def req(name: str, rid: object, command: object, args: object = None, **extra: object):
        m: dict[object, object] = {"id": rid[1] if isinstance(rid, tuple) else rid,
                                   "command": command}
        if args is not None:
            m["args"] = args
        m.update(extra)
        cases.append((name, m, rid))

    req("timestamp ext -1 in args", "ts-1", "ping", {"t": TS(0, 0)})
    req("timestamp96 huge seconds", "ts-2", "ping", {"t": TS(2**63 - 1, 999_999_999)})
    req("timestamp96 most negative", "ts-3", "ping", {"t": TS(-(2**63), 0)})
    req("timestamp in echo value", "ts-4", "echo", {"value": {"when": TS(1, 2)}})
    req("timestamp in configure_lm api_key", "ts-5", "configure_lm",
        {"model": "mock", "api_key": TS(5, 0)})
    req("timestamps in secret-looking extra", "ts-6", "configure_lm",
        {"model": "mock", "extra": {"token": TS(1, 0), "password": [TS(2, 0), b"x"]}})
    req("api_key list of odd things", "ts-7", "configure_lm",
        {"model": "mock", "api_key": [TS(1, 0), 1, None, b"\xff"]})
    req("ext type 5", "ext-5", "ping", {"e": msgpack.ExtType(5, b"\x00\xff")})
    # negative ext codes other than -1 are legal msgpack that msgpack-python refuses to
    # build: either answer (its id, or nil as an undecodable frame) is fine -- one of them.
    req("ext type -2", ("either", "ext-m2"), "echo", {"value": RawSplice(b"\xd5\xfeab")})
    req("ext type -128", ("either", "ext-m128"), "ping", {"e": RawSplice(b"\xc7\x00\x80")})
    req("ext type 127 empty", "ext-127", "ping", {"e": msgpack.ExtType(127, b"")})
    req("bin values", "bin-1", "echo", {"value": {"b": b"\x00\xff" * 10, "k": [b""]}})
    req("int/nil/bool/float/bin map keys", "keys-1", "ping",
        {1: "a", None: "b", False: "c", 2.5: "d", b"k": "e", -1: {0: 1}})
    req("huge ints", "ints-1", "echo", {"value": [2**64 - 1, -(2**63), 0]})
    req("nan/inf floats", "floats-1", "echo",
        {"value": [float("nan"), float("inf"), float("-inf"), -0.0, 5e-324]})
    req("line separators", "\u2028id\u0085\u2029", "echo", {"value": "a\u2028b\u0085c\u2029"})
    req("nul and controls", "nul\x00id", "echo", {"value": "\x00\x1b[31m\r\n"})
    req("transcript placeholders", "<any>", "echo",
        {"value": {"x": "<any>", "y": "<any:program_id_1>", "z": "<var:program_id_1>",
                   "w": "<redacted>"}})
    req("placeholder id var", "<var:program_id_1>", "ping")
    req("generated-looking id", "prog_3f9a12c0", "ping")
    req("transcript json escapes", "escapes", "echo",
        {"value": {"$bin": "!!not base64!!", "$ext": {"type": "x"}, "$map": 5}})
    req("volatile keys odd types", "vol-1", "echo",
        {"value": {"pid": b"x", "worker_id": [1], "created_at": float("nan"),
                   "uptime_s": "s", "x_id": "prog_12345678", "since": TS(0, 0)}})
    req("max int id", 2**64 - 1, "ping")
    req("zero id", 0, "ping")
    req("empty string id", "", "ping")
    req("format-string command", "fmt-1", "%s %d %n {0} {} %(x)s")
    req("nul command", "fmt-2", "\x00")
    req("huge command", "huge-cmd", "c" * 100_000)
    req("huge id", "i" * 100_000, "ping")
    req("huge value", "huge-val", "echo", {"value": "v" * 1_000_000})
    req("deep echo", "deep-1", "echo", {"value": _nest(120)})
    req("handler raises (fail)", "fail-1", "fail")
    req("stdout noise", "noise-1", "stdout_noise", {"text": "}{\x00not a frame"})
    req("unknown envelope key with ext", "env-1", "ping", None, extra=TS(0, 0))

    out: list[tuple[str, bytes, object]] = []
    for name, m, rid in cases:
        out.append((name, pack_spliced(m), rid))
    # frames that are not requests: answered with id nil
    out.append(("timestamp as id", pack({"id": TS(0, 0), "command": "ping"}), None))
    out.append(("bin id", pack({"id": b"\x01", "command": "ping"}), None))
    out.append(("ext -1 with a bad length", b"\x81\xa1x\xc7\x03\xff\x00\x00\x00", None))
    out.append(("array map key", b"\x82\xa2id\x01\x91\x01\xa1x", None))
    out.append(("map map key", b"\x82\xa2id\x01\x81\x01\x01\xa1x", None))
    out.append(("not a map", pack([TS(0, 0), b"x"]), None))
    return out


def _nest(n: int) -> object:
    v: object = 1
    for _ in range(n):
        v = {"n": v}
    return v


@pytest.mark.parametrize("target", ["file", "/dev/full"])
def test_no_observer_logger_or_handler_failure_costs_a_reply(tmp_path, target: str) -> None:
    path = str(tmp_path / "rec.jsonl") if target == "file" else target
    with Worker("--record", path, "--enable-test-commands") as w:
        for name, payload, rid in _hard_cases():
            either = isinstance(rid, tuple)
            if either:
                rid = rid[1]
            nil_before = len(w.nil_replies)
            before = w.reply_count(rid) if rid is not None else 0
            w.send_payload(payload)
            barrier = w.ping()
            assert barrier["status"] == "ok", (name, barrier)
            if either:
                def answered(rid: Any = rid, nil_before: int = nil_before,
                             before: int = before) -> bool | None:
                    return True if (len(w.nil_replies) > nil_before
                                    or w.reply_count(rid) > before) else None

                w._wait(answered, f"a reply for {name}", 30)
            elif rid is None:
                got = w.wait_nil_replies(nil_before + 1)[-1]
                assert got["success"] is False and got["error"]["type"] in (
                    "invalid_frame", "invalid_request"), (name, got)
            else:
                got = w.wait_reply(rid, n=before + 1)
                if name == "handler raises (fail)":
                    assert got["success"] is False and got["error"]["type"] == "internal", got
            # exactly one reply for this case (a second would show up by the next
            # barrier, which has been answered)
            w.ping()
            total = (len(w.nil_replies) - nil_before) + (
                (w.reply_count(rid) - before) if rid is not None else 0)
            assert total == 1, (name, total)
        stats = w.ok("get_stats")
        assert isinstance(stats.get("observer_failures"), int), stats
        _dspy_works(w)
        w.assert_clean()


def test_record_file_stays_one_json_step_per_line(tmp_path) -> None:
    """--record writes a transcript: blank/comment lines or one JSON object per line with
    exactly one of the documented keys (U+2028 etc. are escaped, so '\\n' splits steps)."""
    path = tmp_path / "rec.jsonl"
    w = Worker("--record", str(path), "--enable-test-commands")
    try:
        for _name, payload, rid in _hard_cases():
            w.send_payload(payload)
            if rid is not None and not isinstance(rid, tuple):
                w.wait_reply(rid)
        w.ping()
        w.close_stdin()
        assert w.wait_exit(10) == 0
    finally:
        w.kill()
    keys = {"send", "expect", "expect_event", "send_value", "send_raw", "worker_args"}
    text = path.read_bytes().decode("utf-8")
    bad = []
    for n, line in enumerate(text.split("\n"), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        try:
            obj = json.loads(s)
            if not (isinstance(obj, dict) and len(obj) == 1 and set(obj) <= keys):
                bad.append((n, s[:200]))
        except ValueError as exc:
            bad.append((n, f"{exc}: {s[:200]}"))
    assert not bad, bad[:5]


# --------------------------------------------------------------------------------------
# A host that does not drain stderr must not freeze the worker or prevent exit on EOF.
# --------------------------------------------------------------------------------------

def test_undrained_stderr_never_blocks_replies_or_exit() -> None:
    w = Worker("--max-log-queue", "20", drain_stderr=False)
    try:
        long = "L" * 20_000
        n = 300  # each request logs >= 20 KB: ~6 MB of log lines into a 64 KiB pipe
        for i in range(n):
            w.send({"id": f"{long}-{i}", "command": "ping"})
        for i in range(n):
            r = w.wait_reply(f"{long}-{i}")
            assert r["success"] is True
        # and many short lines, in case long values are cut in the log: 2,000 lines are
        # far more than a 64 KiB pipe plus a 20-line queue hold
        for i in range(2000):
            w.send({"id": i, "command": "ping"})
        for i in range(2000):
            assert w.wait_reply(i)["success"] is True
        mock_session(w, "s")  # DSPy path logs too
        stats = w.ok("get_stats")
        logs = stats.get("logs")
        assert isinstance(logs, dict), stats
        assert logs.get("dropped", 0) > 0, logs
        assert 0 <= logs.get("queued", -1) <= 20, logs
        w.assert_clean()
        w.close_stdin()
        rc = w.wait_exit(5)
        assert rc == 0, f"exit status {rc} after EOF with stderr never drained (None: hung)"
    finally:
        w.kill()


# --------------------------------------------------------------------------------------
# Closing stdin ends the worker within about a second (allowed: 5 s), whatever it does.
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("state", ["engine_loading", "idle", "lm_call_in_flight",
                                   "sleep_in_flight"])
def test_eof_ends_worker_promptly(state: str) -> None:
    w = Worker("--enable-test-commands")
    try:
        if state == "idle":
            w.ok("list_sessions", timeout=60)
        elif state == "lm_call_in_flight":
            mock_session(w, "slow", "x", extra={"latency_ms": 600_000})
            w.ok("create_program", {"session_id": "slow", "program_id": "p",
                                    "signature": "question -> answer"})
            w.send({"id": "slow-call", "command": "execute_program",
                    "args": {"session_id": "slow", "program_id": "p",
                             "inputs": {"question": "q"}}})
            assert w.ping()["in_flight"] >= 1
        elif state == "sleep_in_flight":
            w.send({"id": "sleeper", "command": "sleep", "args": {"ms": 600_000}})
            assert w.ping()["in_flight"] >= 1
        w.close_stdin()
        rc = w.wait_exit(5)
        assert rc == 0, f"state {state}: exit status {rc} (None: still running 5 s after EOF)"
    finally:
        w.kill()


# --------------------------------------------------------------------------------------
# Field names that could never work are refused at create_program/import_program with
# invalid_args -- never `internal` at execute_program.
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sig_worker():
    w = Worker()
    mock_session(w, "sig", "ans")
    yield w
    w.stop()


# PROTOCOL.md: the named parameters DSPy passes fields through (self, instance, base);
# `args`/`kwargs` are `*args`/`**kwargs` and work (the property test below shows it).
RESERVED = ["self", "instance", "base"]


@pytest.mark.parametrize("name", RESERVED)
@pytest.mark.parametrize("where", ["input", "output", "map_input", "map_output", "cot_input"])
def test_call_parameter_names_refused_at_create_program(sig_worker, name: str, where: str) -> None:
    w = sig_worker
    if where == "input":
        sig: object = f"{name} -> answer"
    elif where == "output":
        sig = f"question -> {name}"
    elif where == "map_input":
        sig = {"inputs": [{"name": name}], "outputs": [{"name": "answer"}]}
    elif where == "cot_input":
        sig = f"question, {name} -> answer"
    else:
        sig = {"inputs": [{"name": "question"}], "outputs": [{"name": name}]}
    args = {"session_id": "sig", "signature": sig}
    if where == "cot_input":
        args["program_type"] = "chain_of_thought"
    r = w.request("create_program", args)
    assert r["success"] is False, f"signature {sig!r} accepted: {r}"
    assert r["error"]["type"] == "invalid_args", r
    assert (r["error"].get("details") or {}).get("errors"), r
    w.assert_clean()


def test_import_program_refuses_reserved_field_names(sig_worker) -> None:
    w = sig_worker
    w.ok("create_program", {"session_id": "sig", "program_id": "good",
                            "signature": "question -> answer"})
    doc = w.ok("export_program", {"session_id": "sig", "program_id": "good"})["document"]
    for name in RESERVED:
        bad = json.loads(json.dumps(doc))
        bad["program_id"] = f"imp_{name}"
        bad["signature"]["inputs"][0]["name"] = name
        r = w.request("import_program", {"session_id": "sig", "document": bad})
        assert r["success"] is False and r["error"]["type"] == "invalid_args", (name, r)
    w.assert_clean()


CANDIDATES = [
    "self", "instance", "args", "kwargs", "signature", "demos", "config", "lm",
    "completed", "instructions", "fields", "model_config", "model_fields", "model_dump",
    "model_x", "reasoning", "callbacks", "inputs", "input_fields", "output_fields",
    "with_instructions", "append", "prepend", "insert", "delete", "equals", "dump_state",
    "load_state", "forward", "aforward", "acall", "predict", "traces", "train", "history",
    "new_signature", "lm_kwargs", "settings", "adapter", "mro", "copy", "update", "keys",
    "values", "items", "get", "class", "def", "None", "True", "lambda", "async", "await",
    "match", "case", "type", "print", "id", "dict", "list", "str", "question", "answer",
    "parameters", "named_parameters", "predictors", "named_predictors", "reset",
    "deepcopy", "kwargs_", "stage", "extend_generation", "rationale_field", "prefix",
    "desc", "json_schema_extra", "annotation", "default", "signature_", "demos_",
]


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
@given(name=st.one_of(st.sampled_from(CANDIDATES),
                      st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,70}", fullmatch=True)),
       side=st.sampled_from(["input", "output"]),
       program_type=st.sampled_from(["predict", "chain_of_thought"]))
def test_a_field_name_accepted_at_create_program_works_at_execute(
        sig_worker, name: str, side: str, program_type: str) -> None:
    """Property: if create_program accepts a name, execute_program with it succeeds; if it
    refuses it, that is invalid_args. Never internal."""
    w = sig_worker
    if side == "input":
        if name == "answer":
            return
        sig = {"inputs": [{"name": name}], "outputs": [{"name": "answer"}]}
        inputs = {name: "v"}
    else:
        if name == "question":
            return
        sig = {"inputs": [{"name": "question"}], "outputs": [{"name": name}]}
        inputs = {"question": "v"}
    r = w.request("create_program", {"session_id": "sig", "signature": sig,
                                     "program_type": program_type})
    if r["success"] is False:
        assert r["error"]["type"] == "invalid_args", r
        return
    pid = r["result"]["program_id"]
    x = w.request("execute_program", {"session_id": "sig", "program_id": pid,
                                      "inputs": inputs})
    w.request("delete_program", {"session_id": "sig", "program_id": pid})
    assert x["success"] is True, (
        f"{side} field {name!r} ({program_type}) was accepted at create_program but "
        f"execute_program failed: {x['error']!r:.400}")
    if side == "output":
        assert name in x["result"]["outputs"], x
    w.assert_clean()


# --------------------------------------------------------------------------------------
# Hostile LM answers: too deep, lone surrogates -> lm_error, and never a reply breaking
# the limits the worker enforces on input (depth 128, valid UTF-8).
# --------------------------------------------------------------------------------------

def _nested_json(depth: int, kind: str = "map") -> str:
    inner = "1"
    for _ in range(depth - 1):
        inner = f'{{"a": {inner}}}' if kind == "map" else f"[{inner}]"
    return f'{{"a": {inner}}}'


def _markers(field: str, text: str) -> dict[str, str]:
    return {"__raw__": f"[[ ## {field} ## ]]\n{text}\n\n[[ ## completed ## ]]"}


HOSTILE = [
    ("dict 600 maps deep", "dict", _nested_json(600)),
    ("dict 110 maps deep", "dict", _nested_json(110)),
    ("dict 5000 maps deep", "dict", _nested_json(5000)),
    ("dict holding lists 600 deep", "dict", _nested_json(600, "list")),
    ("dict lone surrogate value", "dict", '{"k": "\\ud800"}'),
    ("dict lone surrogate key", "dict", '{"\\udfff": 1}'),
    ("dict surrogate deep inside", "dict", '{"a": [{"b": ["ok", "\\udc00x"]}]}'),
    ("list[str] lone surrogate", "list[str]", '["fine", "\\ud83d"]'),
    ("raw markers dict 600 deep", "dict", _markers("answer", _nested_json(600))),
    ("raw markers surrogate", "dict", _markers("answer", '{"k": "\\ud800"}')),
    ("raw json str surrogate", "str", {"__raw__": '{"answer": "\\ud800"}'}),
    ("raw json list 600 deep", "list[str]", {"__raw__": '{"answer": ' + "[" * 600 + "]" * 600
                                                       + "}"}),
]


@pytest.fixture(scope="module")
def hostile_worker():
    w = Worker()
    mock_session(w, "hostile", "x")
    for t in ("dict", "list[str]", "str"):
        pid = "p_" + t.replace("[", "_").replace("]", "")
        w.ok("create_program", {"session_id": "hostile", "program_id": pid,
                                "signature": f"question -> answer: {t}"})
    yield w
    w.stop()


@pytest.mark.parametrize("name,out_type,answer", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_lm_answer_is_lm_error_within_limits(hostile_worker, name, out_type,
                                                     answer) -> None:
    w = hostile_worker
    mock_session(w, "hostile", answer, num_retries=0)
    pid = "p_" + out_type.replace("[", "_").replace("]", "")
    r = w.request("execute_program", {"session_id": "hostile", "program_id": pid,
                                      "inputs": {"question": "q"}}, timeout=60)
    w.assert_clean()  # no frame deeper than 128, no bad UTF-8, decodable
    assert r["success"] is False, f"{name}: hostile answer came back as a result: {r!r:.300}"
    assert r["error"]["type"] == "lm_error", f"{name}: {r['error']!r:.500}"
    assert r["error"]["retryable"] is False, r["error"]
    w.assert_alive()


@pytest.mark.parametrize("name,out_type,answer,expected", [
    ("dict 50 deep travels", "dict", _nested_json(50), None),
    ("surrogate pair is fine", "dict", '{"k": "\\ud83d\\ude00"}', {"k": "\U0001f600"}),
])
def test_benign_answers_still_travel(hostile_worker, name, out_type, answer, expected) -> None:
    w = hostile_worker
    mock_session(w, "hostile", answer, num_retries=0)
    r = w.request("execute_program", {"session_id": "hostile", "program_id": "p_dict",
                                      "inputs": {"question": "q"}}, timeout=60)
    assert r["success"] is True, r
    if expected is not None:
        assert r["result"]["outputs"]["answer"] == expected
    else:
        assert r["result"]["outputs"]["answer"] == json.loads(answer)
    w.assert_clean()


# --------------------------------------------------------------------------------------
# cancel of its own id is invalid_args (one reply, not two); cancel semantics otherwise.
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("rid", [424242, "self-cancel", 0, 2**64 - 1])
def test_cancel_naming_its_own_id_is_invalid_args(hostile_worker, rid) -> None:
    w = hostile_worker
    before = w.reply_count(rid)
    w.send({"id": rid, "command": "cancel", "args": {"request_id": rid}})
    r = w.wait_reply(rid, n=before + 1)
    w.ping()
    assert w.reply_count(rid) == before + 1, w.replies.get(rid)
    assert r["success"] is False and r["error"]["type"] == "invalid_args", r
    assert names_field(r["error"], "request_id"), r


def test_cancel_stops_an_in_flight_call_with_one_cancelled_reply(hostile_worker) -> None:
    w = hostile_worker
    mock_session(w, "cancelme", "x", extra={"latency_ms": 600_000})
    w.ok("create_program", {"session_id": "cancelme", "program_id": "p",
                            "signature": "question -> answer"})
    w.send({"id": "long-1", "command": "execute_program",
            "args": {"session_id": "cancelme", "program_id": "p",
                     "inputs": {"question": "q"}}})
    # wait until it is in flight (ping reports it), then cancel
    assert w.ping()["in_flight"] >= 1
    c = w.ok("cancel", {"request_id": "long-1"})
    assert c == {"cancelled": True}, c
    r = w.wait_reply("long-1")
    assert r["success"] is False and r["error"]["type"] == "cancelled", r
    assert r["error"]["retryable"] is False
    assert w.ok("cancel", {"request_id": "long-1"}) == {"cancelled": False}
    w.ping()
    assert w.reply_count("long-1") == 1
    w.assert_clean()


def test_unknown_chars_in_ids_round_trip(hostile_worker) -> None:
    w = hostile_worker
    for rid in ["", " ", string.printable, "é\u2028\U0001f600", "x" * 300]:
        r = w.request("ping", id=rid)
        assert r["id"] == rid and r["success"] is True
