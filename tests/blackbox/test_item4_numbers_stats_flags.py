"""Issue item 4: NaN/±Infinity refused as inputs; get_stats latency percentiles never above
max_ms; --record to an unwritable path (and bad flags) exit 2 before `ready`."""

from __future__ import annotations

import math

import pytest

from .client import Worker, mock_session, names_field

NAN, INF = float("nan"), float("inf")


@pytest.fixture(scope="module")
def w():
    wk = Worker("--enable-test-commands")
    mock_session(wk, "num", "ok")
    for pid, sig in [("f", "x: float -> y"), ("lf", "xs: list[float] -> y"),
                     ("d", "d: dict -> y"), ("i", "n: int -> y")]:
        wk.ok("create_program", {"session_id": "num", "program_id": pid, "signature": sig})
    yield wk
    wk.stop()


BAD_FLOATS = [("nan", NAN), ("inf", INF), ("-inf", -INF)]


@pytest.mark.parametrize("single", [False, True], ids=["float64", "float32"])
@pytest.mark.parametrize("label,value", BAD_FLOATS, ids=[b[0] for b in BAD_FLOATS])
def test_nan_and_infinity_refused_in_inputs(w, label, value, single) -> None:
    cases = [
        ("f", {"x": value}, "inputs.x"),
        ("lf", {"xs": [1.0, value]}, "inputs.xs"),
        ("d", {"d": {"a": {"b": [value]}}}, "inputs.d"),
        ("i", {"n": value}, "inputs.n"),
    ]
    for pid, inputs, field in cases:
        rid = w.new_id("nan")
        w.send({"id": rid, "command": "execute_program",
                "args": {"session_id": "num", "program_id": pid, "inputs": inputs}},
               use_single_float=single)
        r = w.wait_reply(rid)
        assert r["success"] is False, f"{pid} {inputs} accepted: {r}"
        assert r["error"]["type"] == "invalid_args", (pid, inputs, r)
        assert names_field(r["error"], field), (pid, field, r["error"])
    w.assert_clean()


def test_finite_floats_still_accepted(w) -> None:
    for pid, inputs in [("f", {"x": 1.5}), ("lf", {"xs": [0.0, -2.25, 1e300]}),
                        ("d", {"d": {"a": [1.5, "s"]}})]:
        w.ok("execute_program", {"session_id": "num", "program_id": pid, "inputs": inputs})


@pytest.mark.parametrize("label,value", BAD_FLOATS, ids=[b[0] for b in BAD_FLOATS])
def test_nan_and_infinity_refused_wherever_a_number_is_expected(w, label, value) -> None:
    checks = [
        ("create_program", {"session_id": "num", "signature": "x: float -> y",
                            "demos": [{"x": value, "y": "a"}]}, "demos"),
        ("execute_program", {"session_id": "num", "program_id": "f", "inputs": {"x": 1.0},
                             "config": {"temperature": value}}, "config.temperature"),
        ("configure_lm", {"session_id": "num2", "model": "mock", "temperature": value},
         "temperature"),
        ("configure_lm", {"session_id": "num2", "model": "mock", "top_p": value}, "top_p"),
        ("configure_lm", {"session_id": "num2", "model": "mock", "timeout_s": value},
         "timeout_s"),
        ("execute_program", {"session_id": "num", "program_id": "f", "inputs": {"x": 1.0},
                             "lm": {"model": "mock", "temperature": value}}, "lm"),
    ]
    for cmd, args, field in checks:
        r = w.request(cmd, args)
        assert r["success"] is False and r["error"]["type"] == "invalid_args", (cmd, args, r)
        assert names_field(r["error"], field), (cmd, field, r["error"])
    # envelope: timeout_ms is an integer > 0
    rid = w.new_id("nan-env")
    w.send({"id": rid, "command": "ping", "timeout_ms": value})
    r = w.wait_reply(rid)
    assert r["error"]["type"] == "invalid_request", r


def _check_latency(stats: dict) -> list[str]:
    bad = []
    for cmd, lat in stats["latency_ms"].items():
        p50, p95, p99, mx, mean = (lat["p50_ms"], lat["p95_ms"], lat["p99_ms"],
                                   lat["max_ms"], lat["mean_ms"])
        vals = [p50, p95, p99, mx, mean]
        if not all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in vals):
            bad.append(f"{cmd}: non-finite or negative figure {lat}")
            continue
        if not (p50 <= p95 <= p99 <= mx):
            bad.append(f"{cmd}: percentiles not ordered below max_ms {lat}")
        if mean > mx:
            bad.append(f"{cmd}: mean above max_ms {lat}")
        if not (isinstance(lat["count"], int) and lat["count"] >= 1):
            bad.append(f"{cmd}: bad count {lat}")
    return bad


def test_latency_percentiles_never_above_max(w) -> None:
    """After one slow request, and after the 1,024-sample window has rolled past it."""
    w.ok("sleep", {"ms": 60})
    for _ in range(3):
        w.ok("sleep", {"ms": 0})
    bad = _check_latency(w.ok("get_stats"))
    assert not bad, bad
    # pipelined in batches (below --max-in-flight), then collected
    for batch in range(22):
        ids = []
        for i in range(100):
            rid = f"lat-{batch}-{i}"
            ids.append(rid)
            w.send({"id": rid, "command": "sleep" if i % 2 else "ping",
                    "args": {"ms": 0} if i % 2 else {}})
        for rid in ids:
            r = w.wait_reply(rid)
            assert r["success"] is True, r
    stats = w.ok("get_stats")
    bad = _check_latency(stats)
    assert not bad, bad
    # and with many commands of very different durations in the mix
    w.ok("execute_program", {"session_id": "num", "program_id": "f", "inputs": {"x": 2.0}})
    w.request("fail")
    w.request("nope-command")
    bad = _check_latency(w.ok("get_stats"))
    assert not bad, bad
    w.assert_clean()


# --------------------------------------------------------------------------------------
# --record to an unwritable path, and bad flags: exit status 2, before `ready`.
# --------------------------------------------------------------------------------------

def _unwritable(tmp_path) -> list[str]:
    regular = tmp_path / "regular"
    regular.write_text("x")
    return [str(tmp_path / "no" / "such" / "dir" / "rec.jsonl"), str(tmp_path),
            str(regular / "under-a-file.jsonl"), "/proc/version", ""]


@pytest.mark.parametrize("which", range(5), ids=["missing-dir", "directory", "under-file",
                                                 "procfs", "empty"])
def test_record_to_unwritable_path_exits_2_before_ready(tmp_path, which) -> None:
    path = _unwritable(tmp_path)[which]
    wk = Worker("--record", path, wait_ready=False)
    try:
        rc = wk.wait_exit(30)
        wk._wait(lambda: True if wk.eof else None, "stdout EOF", 30)
        assert rc == 2, f"--record {path!r}: exit status {rc}"
        assert not wk.frames and not wk.violations, \
            f"--record {path!r}: frames sent before exiting: {wk.frames[:2]} {wk.violations[:2]}"
    finally:
        wk.kill()


@pytest.mark.parametrize("flags", [["--record"], ["--max-frame-items", "abc"],
                                   ["--log-level", "loud"], ["--no-such-flag"],
                                   ["--max-outbox-bytes", "1e9x"]])
def test_bad_flags_exit_2_before_ready(flags) -> None:
    wk = Worker(*flags, wait_ready=False)
    try:
        rc = wk.wait_exit(30)
        wk._wait(lambda: True if wk.eof else None, "stdout EOF", 30)
        assert rc == 2, f"{flags}: exit status {rc}"
        assert not wk.frames, f"{flags}: frames sent: {wk.frames[:2]}"
    finally:
        wk.kill()


def test_record_to_writable_path_starts(tmp_path) -> None:
    wk = Worker("--record", str(tmp_path / "ok.jsonl"))
    try:
        assert wk.ping()["status"] == "ok"
    finally:
        wk.stop()
