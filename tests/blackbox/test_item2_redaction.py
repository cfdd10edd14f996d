"""Issue item 2: redaction cannot be turned against other tenants; secrets are bounded to
what is configured; operator flags bound api_key_env and configure_cache.

PROTOCOL.md: "Threat model", "LM configuration and precedence", "configure_cache",
"Logs".
"""

from __future__ import annotations

import json
import os
import secrets

import pytest

from .client import LazyWorker, Worker, all_strings, error_fields, mock_session, names_field

# Keys a hostile tenant may configure: common words, protocol words, JSON punctuation.
# (All >= 4 characters: shorter secrets are documented as not scrubbed.)
HOSTILE_KEYS = [
    "invalid", "req-", "error", "success", "result", "session", "prog_", "default",
    "mock", "answer", "true", "null", "type", "message", "retryable", "details", "field",
    "found", "args", "lm_error", "event", "level", "info", "timestamp", "request",
    "outcome", "command", "ping", "question", "1234", '", "', '": "', "programs",
    "Field required", "the ", "program_id",
]


@pytest.fixture(scope="module")
def tenants():
    w = Worker(env={"BB_TEST_API_KEY": "bb-env-secret-value-123"})
    # the worker default LM holds a hostile key too
    w.ok("configure_lm", {"model": "mock", "api_key": "invalid"}, timeout=60)
    for i, key in enumerate(HOSTILE_KEYS):
        r = w.ok("configure_lm", {"session_id": f"attacker-{i}", "model": "mock",
                                  "api_key": key, "extra": {"default": "a"}})
        assert r["lm"].get("api_key") == "<redacted>", r
    yield w
    w.stop()


def _victim_script(w: Worker, sid: str) -> None:
    """A tenant without secrets; every protocol field it gets back must be exact."""
    answer = "invalid answer: error in session req-1 with prog_ ping 1234 found"
    r = w.request("configure_lm", {"session_id": sid, "model": "mock", "cache": False,
                                   "num_retries": 0, "extra": {"default": answer}},
                  id=f"req-{sid}-cfg")
    assert r["id"] == f"req-{sid}-cfg" and r["success"] is True, r
    assert r["result"]["session_id"] == sid and r["result"]["scope"] == "session", r
    assert r["result"]["lm"]["model"] == "mock", r

    for pid in ["invalid", "prog_invalid", "session_answer", "req-1234", "default"]:
        rid = f"invalid-{pid}-{sid}"
        r = w.request("create_program", {"session_id": sid, "program_id": pid,
                                         "signature": "question -> answer"}, id=rid)
        assert r["id"] == rid and r["success"] is True, r
        assert r["result"]["program_id"] == pid and r["result"]["session_id"] == sid, r
        assert [f["name"] for f in r["result"]["signature"]["inputs"]] == ["question"], r
        assert [f["name"] for f in r["result"]["signature"]["outputs"]] == ["answer"], r

        r = w.request("execute_program", {"session_id": sid, "program_id": pid,
                                          "inputs": {"question": "invalid session?"}},
                      id=123456)
        assert r["id"] == 123456 and r["success"] is True, r
        assert r["result"]["outputs"] == {"answer": answer}, r
        assert r["result"]["lm"] == "mock" and r["result"]["lm_source"] == "session", r

        r = w.request("get_program", {"session_id": sid, "program_id": pid})
        assert r["result"]["program_id"] == pid and r["result"]["session_id"] == sid, r

        doc = w.ok("export_program", {"session_id": sid, "program_id": pid})["document"]
        assert doc["format"] == "dspy-bridge/program" and doc["program_id"] == pid, doc

    listed = w.ok("list_programs", {"session_id": sid})
    assert listed["session_id"] == sid
    assert sorted(p["program_id"] for p in listed["programs"]) == sorted(
        ["invalid", "prog_invalid", "session_answer", "req-1234", "default"]), listed

    sessions = w.ok("list_sessions", {"session_id": sid})["sessions"]
    assert [s["session_id"] for s in sessions] == [sid], sessions

    usage = w.ok("get_usage", {"session_id": sid})
    assert usage["session_id"] == sid and list(usage["models"]) == ["mock"], usage

    # error types and their details are protocol fields too
    e = w.err("get_program", {"session_id": sid, "program_id": "invalid_missing"},
              id="req-notfound")
    assert e["type"] == "not_found", e
    assert e["details"]["program_id"] == "invalid_missing" and e["details"]["session_id"] == sid
    e = w.err("configure_lm", {"session_id": sid, "model": "mock", "temperature": 9})
    assert e["type"] == "invalid_args" and error_fields(e) == ["temperature"], e
    r = w.request("invalid_command_found", id="invalid-cmd")
    assert r["id"] == "invalid-cmd" and r["error"]["type"] == "unknown_command", r
    w.send({"id": "req-envelope", "command": "ping", "arg": {}})
    r = w.wait_reply("req-envelope")
    assert r["error"]["type"] == "invalid_request", r

    # a provider failure of this tenant's own LM: its text is scrubbed only with its own
    # secrets (it has none), so nothing in it is redacted
    w.ok("configure_lm", {"session_id": sid, "model": "mock", "num_retries": 0,
                          "cache": False,
                          "extra": {"fail": {"error": "auth", "message":
                                             "invalid error: session request type found"}}})
    r = w.request("execute_program", {"session_id": sid, "program_id": "invalid",
                                      "inputs": {"question": "q"}}, id="req-lmerror")
    assert r["id"] == "req-lmerror" and r["error"]["type"] == "lm_error", r
    assert r["error"]["retryable"] is False, r
    assert r["error"]["details"]["reason"] == "provider_error", r
    assert r["error"]["details"]["model"] == "mock", r
    leaked = [s for s in all_strings(r["error"]) if "<redacted>" in s]
    assert not leaked, f"another tenant's key redacted this tenant's error text: {leaked}"


@pytest.mark.parametrize("sid", ["victim", "invalid", "req-", "session", "prog_x", "1234"])
def test_other_tenants_keys_never_rewrite_a_tenants_frames(tenants, sid: str) -> None:
    _victim_script(tenants, sid)
    tenants.assert_clean()


def test_a_tenants_own_key_never_rewrites_protocol_fields(tenants) -> None:
    """Redaction never rewrites ids, types, events, map keys, program or session ids --
    not even for the tenant whose key it is."""
    w = tenants
    for i, key in enumerate(HOSTILE_KEYS):
        sid = f"{key}-own"
        pid = f"{key}_prog" if key.isidentifier() else f"p{i}"
        rid = f"{key}-rid"
        r = w.request("configure_lm", {"session_id": sid, "model": "mock", "api_key": key,
                                       "extra": {"default": "x"}}, id=rid)
        assert r["id"] == rid and r["success"] is True, (key, r)
        assert r["result"]["session_id"] == sid, (key, r)
        r = w.request("create_program", {"session_id": sid, "program_id": pid,
                                         "signature": "question -> answer"}, id=rid)
        assert r["id"] == rid and r["success"] is True, (key, r)
        assert r["result"]["program_id"] == pid and r["result"]["session_id"] == sid, (key, r)
        r = w.request("get_program", {"session_id": sid, "program_id": "nope"}, id=rid)
        assert r["id"] == rid, (key, r)
        assert r["id"] == rid and r["error"]["type"] == "not_found", (key, r)
        assert r["error"]["details"]["session_id"] == sid, (key, r)
        r = w.request("execute_program", {"session_id": sid, "program_id": pid,
                                          "inputs": {"question": "q"}}, id=rid)
        assert r["id"] == rid and r["success"] is True, (key, r)
        assert set(r["result"]["outputs"]) == {"answer"}, (key, r)
        assert set(r["result"]["usage"]) >= {"requests", "total_tokens"}, (key, r)
    w.assert_clean()


def test_stderr_lines_stay_json_objects_whatever_keys_tenants_choose(tenants) -> None:
    """Logs: one JSON object per line with event, level, timestamp (my reading: a held
    secret may be scrubbed from values, but never breaks the line's JSON or its keys)."""
    w = tenants
    w.ping()
    marker = f"marker-{secrets.token_hex(4)}"
    w.request("ping", id=marker)
    w.wait_stderr(marker.encode())
    bad = []
    with w.cond:
        lines = list(w.stderr_lines)
    for line in lines:
        try:
            obj = json.loads(line)
        except ValueError as exc:
            bad.append(f"{exc}: {line[:200]!r}")
            continue
        if not (isinstance(obj, dict) and {"event", "level", "timestamp"} <= set(obj)):
            bad.append(f"missing event/level/timestamp: {line[:200]!r}")
    assert not bad, f"{len(bad)} bad stderr lines, e.g.:\n" + "\n".join(bad[:5])


def test_session_evicted_event_survives_hostile_keys() -> None:
    with Worker("--session-idle-ttl-s", "2") as w:
        # hostile keys kept alive the whole time: the worker default, and calls in flight
        w.ok("configure_lm", {"model": "mock", "api_key": "session_evicted"}, timeout=60)
        for i, key in enumerate(["evicted", "session", "event", "idle", "victim"]):
            sid = f"keeper-{i}"
            w.ok("create_program", {"session_id": sid, "program_id": "p",
                                    "signature": "question -> answer"})
            w.send({"id": f"keeper-call-{i}", "command": "execute_program",
                    "args": {"session_id": sid, "program_id": "p",
                             "inputs": {"question": "q"},
                             "lm": {"model": "mock", "api_key": key,
                                    "extra": {"latency_ms": 600_000}}}})
        w.ok("create_program", {"session_id": "victim-idle", "program_id": "p",
                                "signature": "question -> answer"})
        ev = w.wait_event("session_evicted", timeout=60,
                          where=lambda e: "victim" in str(e.get("session_id")))
        assert ev["event"] == "session_evicted" and ev["session_id"] == "victim-idle", ev
        assert ev.get("reason") == "idle", ev
        assert w.ping()["in_flight"] >= 5
        w.assert_clean()


# --------------------------------------------------------------------------------------
# secrets_held: a rejected configure_lm holds nothing; secrets are forgotten when no LM
# uses them.
# --------------------------------------------------------------------------------------

def _held(w: Worker) -> int:
    stats = w.ok("get_stats")
    assert isinstance(stats.get("secrets_held"), int), \
        f"get_stats has no integer secrets_held: keys {sorted(stats)}"
    return stats["secrets_held"]


REJECTED = [
    {"model": "mock", "api_key": "rejected-secret-temp", "temperature": 5},
    {"model": "mock", "api_key": "rejected-secret-env", "api_key_env": "HOME"},
    {"model": 5, "api_key": "rejected-secret-model"},
    {"model": "mock", "api_key": "rejected-secret-unknown", "bogus": 1},
    {"model": "mock", "api_key": "rejected-secret-fail", "extra": {"fail": {"error": "nope"}}},
    {"session_id": "", "model": "mock", "api_key": "rejected-secret-sid"},
    {"session_id": "x" * 257, "model": "mock", "api_key": "rejected-secret-sid2"},
    {"model": "mock", "api_key": "rejected-secret-base", "api_base": "ftp://nowhere"},
    {"model": "mock", "api_key": "rejected-secret-nan", "top_p": float("nan")},
    {"model": "mock", "api_key": "rejected-secret-cb", "circuit_breaker": {"bogus": 1}},
]


def test_rejected_configure_lm_holds_no_secret(tenants) -> None:
    w = tenants
    base = _held(w)
    for args in REJECTED:
        for sid in (None, "rejecting"):
            a = dict(args)
            if sid is not None:
                a.setdefault("session_id", sid)
            e = w.err("configure_lm", a)
            assert e["type"] in ("invalid_args", "limit_exceeded"), (a, e)
            assert _held(w) == base, f"rejected configure_lm {a} left a secret held"
    # rejected program / call LMs hold nothing either
    e = w.err("create_program", {"session_id": "rejecting", "signature": "no arrow here",
                                 "lm": {"model": "mock", "api_key": "rejected-secret-prog"}})
    assert e["type"] == "invalid_args", e
    assert _held(w) == base
    e = w.err("execute_program", {"session_id": "rejecting", "program_id": "none",
                                  "inputs": {}, "lm": {"model": "mock",
                                                       "api_key": "rejected-secret-call",
                                                       "temperature": 99}})
    assert e["type"] in ("invalid_args", "not_found"), e
    assert _held(w) == base


def test_rejected_key_is_not_scrubbed_from_logs(tenants) -> None:
    """A rejected configure_lm holds nothing, so its 'key' is not scrubbed from log lines:
    a later request id that contains it is logged verbatim."""
    w = tenants
    key = f"zebrafish{secrets.token_hex(3)}"
    w.err("configure_lm", {"session_id": "zf", "model": "mock", "api_key": key,
                           "temperature": 7})
    rid = f"{key}ZZ"  # nothing here is one of the hostile keys this worker holds
    w.request("ping", id=rid)
    marker = f"after-{key[::-1]}"
    w.request("ping", id=marker)
    w.wait_stderr(marker.encode())
    assert any(rid.encode() in line for line in w.stderr_lines), \
        "the id containing a rejected key was redacted in the log: the key is held"


def test_secrets_are_forgotten_when_no_lm_uses_them(tenants) -> None:
    w = tenants
    base = _held(w)
    k1 = "held-" + secrets.token_hex(8)
    w.ok("configure_lm", {"session_id": "holder", "model": "mock", "api_key": k1})
    assert _held(w) == base + 1
    w.ok("configure_lm", {"session_id": "holder", "model": "mock"})  # replaced, keyless
    assert _held(w) == base
    w.ok("configure_lm", {"session_id": "holder", "model": "mock", "api_key": k1})
    assert _held(w) == base + 1
    w.ok("end_session", {"session_id": "holder"})
    assert _held(w) == base
    k2 = "prog-" + secrets.token_hex(8)
    w.ok("create_program", {"session_id": "holder2", "program_id": "p",
                            "signature": "question -> answer",
                            "lm": {"model": "mock", "api_key": k2}})
    assert _held(w) == base + 1
    w.ok("delete_program", {"session_id": "holder2", "program_id": "p"})
    assert _held(w) == base
    k3 = "call-" + secrets.token_hex(8)
    w.ok("create_program", {"session_id": "holder2", "program_id": "q",
                            "signature": "question -> answer"})
    w.ok("execute_program", {"session_id": "holder2", "program_id": "q",
                             "inputs": {"question": "x"},
                             "lm": {"model": "mock", "api_key": k3}})
    assert _held(w) == base, "a call's own key is still held after the call"


# --------------------------------------------------------------------------------------
# Scrub first, then truncate: no fragment of a key in provider error text.
# --------------------------------------------------------------------------------------

def _fragments(key: str, n: int = 8) -> list[str]:
    return [key[i:i + n] for i in range(len(key) - n + 1)]


def _leaks(reply: object, key: str) -> list[str]:
    frags = _fragments(key)
    return [s[:120] for s in all_strings(reply) if any(f in s for f in frags)]


@pytest.mark.parametrize("offset", [0, 1, 5, 17, 33, 250, 499, 997])
def test_provider_error_text_scrubbed_before_truncation(tenants, offset: int) -> None:
    w = tenants
    key = "sk-" + secrets.token_hex(24)
    # whole copies of the key only (the mock caps fail.message at 2000 characters); the
    # worker's own truncation then falls inside a copy for every offset below it
    text = "x" * offset + key * ((2000 - offset) // len(key))
    sid = f"trunc-{offset}"
    w.ok("configure_lm", {"session_id": sid, "model": "mock", "api_key": key,
                          "num_retries": 0, "cache": False,
                          "extra": {"fail": {"error": "auth", "message": text}}})
    w.ok("create_program", {"session_id": sid, "program_id": "p",
                            "signature": "question -> answer"})
    r = w.request("execute_program", {"session_id": sid, "program_id": "p",
                                      "inputs": {"question": "q"}})
    assert r["success"] is False and r["error"]["type"] == "lm_error", r
    assert not _leaks(r, key), f"key fragments in a provider error: {_leaks(r, key)[:3]}"

    # raw provider output that cannot be parsed: raw_excerpt is cut to 500 characters
    w.ok("configure_lm", {"session_id": sid, "model": "mock", "api_key": key,
                          "num_retries": 0, "cache": False,
                          "extra": {"default": {"__raw__": text}}})
    r = w.request("execute_program", {"session_id": sid, "program_id": "p",
                                      "inputs": {"question": "q"}})
    assert r["success"] is False and r["error"]["type"] == "lm_error", r
    assert not _leaks(r, key), f"key fragments in raw_excerpt: {_leaks(r, key)[:3]}"

    # the call's own LM: its key is scrubbed from its own error
    k2 = "sk-" + secrets.token_hex(24)
    r = w.request("execute_program", {
        "session_id": sid, "program_id": "p", "inputs": {"question": "q"},
        "lm": {"model": "mock", "api_key": k2, "num_retries": 0, "cache": False,
               "extra": {"fail": {"error": "server", "message":
                                  "y" * offset + k2 * ((2000 - offset) // len(k2))}}}})
    assert r["success"] is False and r["error"]["type"] == "lm_error", r
    assert not _leaks(r, k2), f"call-key fragments in a provider error: {_leaks(r, k2)[:3]}"

    # and the key never shows up in any read-only view
    for cmd, args in [("get_stats", {}), ("list_sessions", {"session_id": sid}),
                      ("get_program", {"session_id": sid, "program_id": "p"}),
                      ("export_program", {"session_id": sid, "program_id": "p"}),
                      ("get_usage", {"session_id": sid})]:
        res = w.ok(cmd, args)
        assert not _leaks(res, key) and not _leaks(res, k2), (cmd, _leaks(res, key))
    w.assert_clean()


# --------------------------------------------------------------------------------------
# api_key_env may only name allowed variables (default *_API_KEY).
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["HOME", "PATH", "AWS_SECRET_ACCESS_KEY", "API_KEY",
                                  "BB_TEST_API_KEY_X", "LD_PRELOAD", "BB_TOKEN",
                                  "PYTHONPATH", "bb_test_api_key_not"])
def test_api_key_env_outside_default_allow_list_is_invalid_args(tenants, name: str) -> None:
    e = tenants.err("configure_lm", {"session_id": "envs", "model": "mock",
                                     "api_key_env": name})
    assert e["type"] == "invalid_args" and names_field(e, "api_key_env"), e


def test_api_key_env_inside_default_allow_list_is_accepted_and_not_shown(tenants) -> None:
    r = tenants.ok("configure_lm", {"session_id": "envs", "model": "mock",
                                    "api_key_env": "BB_TEST_API_KEY"})
    assert r["lm"]["api_key_env"] == "BB_TEST_API_KEY", r
    assert "bb-env-secret-value-123" not in json.dumps(r)


@pytest.fixture(scope="module")
def operator_worker(tmp_path_factory):
    base = tmp_path_factory.mktemp("cache")
    root = base / "root"
    outside = base / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    lazy = LazyWorker("--disk-cache-root", str(root), "--max-cache-entries", "100",
                      "--max-disk-cache-bytes", "1000000", "--max-cache-bytes", "5000000")
    lazy.root, lazy.outside, lazy.base = root, outside, base  # type: ignore[attr-defined]
    yield lazy
    lazy.stop()


def test_api_key_env_allow_flag_replaces_default() -> None:
    w = Worker("--api-key-env-allow", "TENANT_*", "--api-key-env-allow", "OTHER_SECRET",
               env={"TENANT_ONE": "t1-secret-value", "OTHER_SECRET": "o-secret-value",
                    "BB_TEST_API_KEY": "bb-secret-value"})
    try:
        _env_allow_checks(w)
    finally:
        w.stop()


def _env_allow_checks(w: Worker) -> None:
    for name in ["TENANT_ONE", "OTHER_SECRET"]:
        r = w.ok("configure_lm", {"session_id": "e", "model": "mock", "api_key_env": name},
                 timeout=60)
        assert r["lm"]["api_key_env"] == name
    for name in ["BB_TEST_API_KEY", "OTHER_SECRET_2", "HOME", "XTENANT_ONE"]:
        e = w.err("configure_lm", {"session_id": "e", "model": "mock", "api_key_env": name})
        assert e["type"] == "invalid_args" and names_field(e, "api_key_env"), (name, e)


# --------------------------------------------------------------------------------------
# configure_cache cannot escape --disk-cache-root or exceed the operator's sizes.
# --------------------------------------------------------------------------------------

def test_disk_cache_needs_operator_root(tenants) -> None:
    w = tenants
    try:
        for args in [{"enable_disk": True},
                     {"enable_disk": True, "disk_dir": "/tmp/bb-nowhere"}]:
            e = w.err("configure_cache", args)
            assert e["type"] == "invalid_args", (args, e)
        assert not os.path.exists("/tmp/bb-nowhere")
    finally:  # if it was accepted, stop writing to disk
        w.request("configure_cache", {"enable_disk": False})


def test_cache_sizes_bounded_by_default_operator_limits(tenants) -> None:
    w = tenants
    e = w.err("configure_cache", {"memory_max_entries": 10_001})
    assert e["type"] == "limit_exceeded" and e["retryable"] is False, e
    assert "max_cache_entries" in str((e.get("details") or {}).get("limit")), e
    r = w.ok("configure_cache", {"memory_max_entries": 10_000})
    assert r["memory_max_entries"] == 10_000 and r["memory_max_bytes"] == 268435456, r
    assert r["enable_disk"] is False, r
    # memory_max_bytes is not among configure_cache's documented arguments; whether it
    # is refused as an unknown key (invalid_args) or as over --max-cache-bytes
    # (limit_exceeded), a caller must not be able to raise it.
    e = w.err("configure_cache", {"memory_max_bytes": 10**12})
    assert e["type"] in ("invalid_args", "limit_exceeded"), e
    assert w.ok("configure_cache", {})["memory_max_bytes"] == 268435456


def _inside(path: str, root: str) -> bool:
    p = os.path.realpath(path)
    r = os.path.realpath(root)
    return p == r or p.startswith(r + os.sep)


def test_disk_dir_cannot_leave_the_operator_root(operator_worker) -> None:
    w = operator_worker()
    root, outside = str(operator_worker.root), str(operator_worker.outside)
    escapes = [outside, os.path.join(root, "..", "outside"), os.path.join(root, "link"),
               os.path.join(root, "link", "sub"), root + "-evil", "/", "/tmp",
               os.path.join(root, "sub", "..", "..", "outside")]
    for d in escapes:
        e = w.err("configure_cache", {"enable_disk": True, "disk_dir": d}, timeout=60)
        assert e["type"] == "invalid_args", (d, e)
    # (relative disk_dir values are not checked: PROTOCOL.md does not say what they are
    # relative to, and accepting one relative to the cwd would write into the repo)
    r = w.ok("configure_cache", {"enable_disk": True})
    assert os.path.realpath(r["disk_dir"]) == os.path.realpath(root), r
    r = w.ok("configure_cache", {"enable_disk": True, "disk_dir": os.path.join(root, "sub")})
    assert _inside(r["disk_dir"], root), r
    assert r["disk_size_limit_bytes"] == 1_000_000 and r["memory_max_entries"] == 100, r
    assert r["memory_max_bytes"] == 5_000_000, r
    # use it once, then check that nothing was written outside the root
    mock_session(w, "c", "cached")
    w.ok("create_program", {"session_id": "c", "program_id": "p",
                            "signature": "question -> answer"})
    w.ok("execute_program", {"session_id": "c", "program_id": "p", "inputs": {"question": "q"}})
    assert os.listdir(outside) == [], os.listdir(outside)
    base = operator_worker.base
    assert sorted(os.listdir(base)) == ["outside", "root"], os.listdir(base)


def test_cache_sizes_bounded_by_operator_flags(operator_worker) -> None:
    w = operator_worker()
    e = w.err("configure_cache", {"enable_disk": True, "disk_size_limit_bytes": 1_000_001})
    assert e["type"] == "limit_exceeded" and e["retryable"] is False, e
    assert "max_disk_cache_bytes" in str((e.get("details") or {}).get("limit")), e
    e = w.err("configure_cache", {"memory_max_entries": 101})
    assert e["type"] == "limit_exceeded" and e["retryable"] is False, e
    assert "max_cache_entries" in str((e.get("details") or {}).get("limit")), e
    r = w.ok("configure_cache", {"enable_disk": True, "disk_size_limit_bytes": 1_000_000,
                                 "memory_max_entries": 100})
    assert r["disk_size_limit_bytes"] == 1_000_000 and r["memory_max_entries"] == 100, r
    r = w.ok("configure_cache", {})
    assert r["memory_max_entries"] == 100 and r["memory_max_bytes"] == 5_000_000, r
    w.assert_clean()
