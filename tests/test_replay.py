"""The transcript format, the recorder and the replay tool.

Unit tests of the sans-I/O parts (`bridge.tools.transcript`, `bridge.tools.record`'s core), then
replays against real workers: failure reports, and the round trip the issue asks for —
record a session driven by a client, replay it as-is, and see that changing any
expected value in it fails the replay with a diff pointing at that value.
"""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import WorkerProcess
from hypothesis import given
from hypothesis import strategies as st

from dspy_bridge.tools import transcript as tx
from dspy_bridge.tools.client import WorkerClient
from dspy_bridge.tools.record import TranscriptRecorder, worker_args_without_record
from dspy_bridge.tools.replay import ReplayResult, replay_file, replay_text
from dspy_bridge.tools.replay_cli import main

REPO = Path(__file__).resolve().parent.parent
TEST_COMMANDS = '{"worker_args": ["--enable-test-commands"]}\n'


# ----- matching -----


def mismatch_of(expected: Any, actual: Any) -> tx.Mismatch | None:
    return tx.match(expected, actual).mismatch


def test_maps_match_on_expected_keys_only() -> None:
    assert mismatch_of({"a": 1}, {"a": 1, "b": 2}) is None
    assert mismatch_of({"a": {"b": 1}}, {"a": {"b": 1, "c": 3}}) is None
    found = mismatch_of({"a": {"b": 1, "c": 2}}, {"a": {"b": 1}})
    assert found is not None and found.path == ("a", "c") and found.missing


def test_lists_match_exactly_in_length_and_order() -> None:
    assert mismatch_of([1, 2], [1, 2]) is None
    found = mismatch_of([1, 2], [1, 2, 3])
    assert found is not None and found.path == () and "3" in found.reason
    found = mismatch_of([1, 2], [2, 1])
    assert found is not None and found.path == (0,)
    # Maps inside lists follow the map rule.
    assert mismatch_of([{"field": "ms"}], [{"field": "ms", "message": "x"}]) is None


def test_any_matches_every_value_including_nil() -> None:
    values: list[Any] = [None, 0, "", [], {}, b"x", {"deep": [1]}]
    for value in values:
        assert mismatch_of({"k": "<any>"}, {"k": value}) is None
    assert mismatch_of(["<any>", 2], [None, 2]) is None
    # A missing key is still missing.
    assert mismatch_of({"k": "<any>"}, {}) is not None


@pytest.mark.parametrize(
    ("expected", "actual"),
    [
        (True, 1),
        (1, True),
        (0, False),
        (None, 0),
        ("1", 1),
        ("ab", b"ab"),
        (b"ab", "ab"),
        (1, 2),
        ({"a": 1}, [1]),
        ([1], {"0": 1}),
    ],
)
def test_scalars_keep_their_types(expected: Any, actual: Any) -> None:
    assert mismatch_of(expected, actual) is not None


def test_numbers_compare_by_value() -> None:
    assert mismatch_of(1, 1.0) is None
    assert mismatch_of(2.5, 2.5) is None
    assert mismatch_of(math.nan, math.nan) is None


def test_captures_bind_and_variables_refer() -> None:
    result = tx.match({"program_id": "<any:p>"}, {"program_id": "prog_1a2b3c4d"})
    assert result.ok and result.bindings == {"p": "prog_1a2b3c4d"}
    again = tx.match({"ids": ["<var:p>", "<any:p>"]}, {"ids": ["prog_1a2b3c4d"] * 2},
                     result.bindings)
    assert again.ok
    wrong = tx.match({"x": "<var:p>"}, {"x": "other"}, result.bindings)
    assert wrong.mismatch is not None and "<var:p>" in wrong.mismatch.reason
    assert wrong.bindings == result.bindings
    unbound = tx.match({"x": "<var:q>"}, {"x": 1})
    assert unbound.mismatch is not None and "never captured" in unbound.mismatch.reason
    assert tx.substitute({"a": ["<var:p>"], "b": "<var:p>x"}, {"p": 7}) == {
        "a": [7], "b": "<var:p>x"
    }
    with pytest.raises(KeyError):
        tx.substitute({"a": "<var:nope>"}, {})


def test_mismatch_describes_path_expected_and_actual() -> None:
    found = mismatch_of(
        {"result": {"outputs": [{"answer": "Paris"}]}},
        {"result": {"outputs": [{"answer": "Lyon"}]}},
    )
    assert found is not None
    text = found.describe()
    assert text.splitlines() == [
        "at result.outputs[0].answer: value differs",
        '    expected: "Paris"',
        '    actual:   "Lyon"',
    ]
    assert tx.format_path(("error", "details", "odd key", 2)) == 'error.details["odd key"][2]'
    assert tx.format_path((1, "a")) == "[1].a"


# (Strings starting with "<" are left out: "<any>" and "<var:x>" mean something.)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
    | st.text(max_size=8).filter(lambda text: not text.startswith("<"))
    | st.binary(max_size=8) | st.floats(allow_nan=False),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20,
)


def value_leaves(value: Any, path: tx.Path = ()) -> Iterator[tuple[tx.Path, Any]]:
    """Every scalar and every empty map or list, with its path."""
    if isinstance(value, dict | list) and not value:
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from value_leaves(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from value_leaves(item, (*path, index))
    else:
        yield path, value


def changed(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, float) and not math.isfinite(value):
        return 0.0  # inf + 1 and inf / 2 are still inf
    if isinstance(value, int | float):
        return value + 1 if abs(value) < 2**52 else value / 2
    if isinstance(value, str):
        return value + "~"
    if isinstance(value, bytes):
        return value + b"~"
    return 0


@given(json_values)
def test_a_value_matches_itself(value: Any) -> None:
    assert tx.match(value, copy.deepcopy(value)).ok


@given(json_values, st.data())
def test_changing_any_leaf_is_a_mismatch_at_its_path(value: Any, data: st.DataObject) -> None:
    found = list(value_leaves(value))
    path, leaf = data.draw(st.sampled_from(found))
    expected = copy.deepcopy(value)
    if path:
        set_path(expected, path, changed(leaf))
    else:
        expected = changed(leaf)
    mismatch = tx.match(expected, value).mismatch
    assert mismatch is not None and mismatch.path == path


# ----- format -----


def test_bin_and_non_string_keys_round_trip_through_json() -> None:
    value = {"b": b"\x00\xff", "nested": [b"", {"x": b"hi"}], "m": {1: "one", b"k": 2}}
    encoded = tx.to_json(value)
    assert encoded["b"] == {"$bin": "AP8="}
    assert encoded["m"] == {"$map": [[1, "one"], [{"$bin": "aw=="}, 2]]}
    assert tx.from_json(json.loads(json.dumps(encoded))) == value


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text() | st.binary()
    | st.floats(allow_nan=False),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@given(msgpack_values)
def test_any_msgpack_value_survives_a_transcript_line(value: Any) -> None:
    send = tx.Send({"id": 1, "command": "echo", "args": {"value": value}})
    expect = tx.Expect({"id": 1, "success": True, "result": value})
    parsed = tx.parse(tx.format_transcript([send, expect]))
    assert isinstance(parsed[0], tx.Send) and isinstance(parsed[1], tx.Expect)
    assert parsed[0].message["args"]["value"] == value
    assert tx.match(parsed[1].message, expect.message).ok


def test_parse_reads_every_step_kind_and_skips_comments() -> None:
    text = "\n".join([
        "# a comment",
        "",
        '{"worker_args": ["--enable-test-commands"]}',
        '{"send": {"id": 1, "command": "ping"}}',
        '   # indented comment',
        '{"send_value": [1, 2]}',
        '{"send_raw": {"$bin": "wQ=="}}',
        '{"expect": {"id": 1, "success": true}}',
        '{"expect_event": {"event": "ready"}}',
    ])
    steps = tx.parse(text)
    assert steps == [
        tx.WorkerArgs(("--enable-test-commands",), 3),
        tx.Send({"id": 1, "command": "ping"}, 4),
        tx.SendValue([1, 2], 6),
        tx.SendRaw(b"\xc1", 7),
        tx.Expect({"id": 1, "success": True}, 8),
        tx.ExpectEvent({"event": "ready"}, 9),
    ]
    written = tx.format_transcript(steps)
    assert [replace(step, line=0) for step in tx.parse(written)] == [
        replace(step, line=0) for step in steps
    ]


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ('{"send": {"id": 1}}\n{"send": ', 2, "not valid JSON"),
        ("[1]", 1, "must be a JSON object"),
        ('{"send": {}, "expect": {}}', 1, "exactly one"),
        ('{"sned": {}}', 1, "unknown key(s): sned"),
        ('{"send": [1]}', 1, "send must be a map"),
        ('{"send_raw": "AA=="}', 1, "send_raw must be"),
        ('{"send": {"x": {"$bin": "!!"}}}', 1, "base64"),
        ('{"worker_args": "--x"}', 1, "list of strings"),
    ],
)
def test_parse_errors_name_the_line(text: str, line: int, words: str) -> None:
    with pytest.raises(tx.TranscriptError) as caught:
        tx.parse(text)
    assert caught.value.line == line
    assert words in str(caught.value)


# ----- the recorder's core -----


def test_recorder_redacts_sent_secrets_and_never_writes_them() -> None:
    recorder = TranscriptRecorder()
    lines = recorder.incoming({
        "id": 1, "command": "configure_lm",
        "args": {"model": "mock", "api_key": "sk-live-123456", "api_key_env": "OPENAI_KEY",
                 "extra": {"headers": {"Authorization": "Bearer abc"}}},
    })
    lines += recorder.outgoing({
        "id": 1, "success": True,
        "result": {"model": "mock", "api_key": "<redacted>", "token": "tok-9999",
                   "usage": {"total_tokens": 12}},
    })
    text = "\n".join(lines)
    assert "sk-live-123456" not in text and "Bearer abc" not in text and "tok-9999" not in text
    send, expect = (json.loads(line) for line in lines)
    assert send["send"]["args"]["api_key"] == "<redacted>"
    assert send["send"]["args"]["api_key_env"] == "OPENAI_KEY"
    assert send["send"]["args"]["extra"]["headers"]["Authorization"] == "<redacted>"
    # The worker's own redaction stays checked; other secret-named values cannot be replayed.
    assert expect["expect"]["result"]["api_key"] == "<redacted>"
    assert expect["expect"]["result"]["token"] == "<any>"
    assert expect["expect"]["result"]["usage"] == {"total_tokens": 12}


def test_recorder_marks_volatile_values() -> None:
    recorder = TranscriptRecorder()
    ready = json.loads(recorder.outgoing({
        "event": "ready", "protocol_version": 1, "worker_id": "w-1", "pid": 5,
        "commands": ["ping"], "versions": {"dspy": "3"},
    })[0])
    assert ready == {"expect_event": {"event": "ready", "protocol_version": 1,
                                      "worker_id": "<any>", "pid": "<any>",
                                      "commands": "<any>", "versions": "<any>"}}
    recorder.incoming({"id": 1, "command": "ping", "args": {}})
    ping = json.loads(recorder.outgoing({"id": 1, "success": True, "result": {
        "status": "ok", "worker_id": "w-1", "pid": 5, "uptime_s": 1.5, "in_flight": 2,
        "dspy_loaded": False}})[0])
    assert ping["expect"]["result"] == {
        "status": "ok", "worker_id": "<any>", "pid": "<any>", "uptime_s": "<any>",
        "in_flight": "<any>", "dspy_loaded": "<any>"}
    recorder.incoming({"id": 2, "command": "get_stats", "args": {}})
    stats = json.loads(recorder.outgoing(
        {"id": 2, "success": True, "result": {"requests": {"ping": 1}, "errors": {}}})[0])
    assert stats["expect"]["result"] == {"requests": "<any>", "errors": "<any>"}
    recorder.incoming({"id": 3, "command": "execute_program", "args": {}})
    run = json.loads(recorder.outgoing({"id": 3, "success": True, "result": {
        "outputs": {"answer": "4"}, "duration_ms": 3.2, "created_at": "2026-01-01"}})[0])
    assert run["expect"]["result"] == {
        "outputs": {"answer": "4"}, "duration_ms": "<any>", "created_at": "<any>"}
    recorder.incoming({"id": 4, "command": "fail", "args": {}})
    failed = json.loads(recorder.outgoing({"id": 4, "success": False, "error": {
        "type": "internal", "message": "m", "retryable": False, "traceback": "Trace..."}})[0])
    assert failed["expect"]["error"]["traceback"] == "<any>"


def test_recorder_captures_generated_ids_and_refers_to_them() -> None:
    recorder = TranscriptRecorder()
    recorder.incoming({"id": 1, "command": "create_program", "args": {"signature": "q -> a"}})
    created = json.loads(recorder.outgoing({"id": 1, "success": True, "result": {
        "program_id": "prog_3f9a12c0", "session_id": "default"}})[0])
    assert created["expect"]["result"] == {"program_id": "<any:program_id_1>",
                                           "session_id": "default"}
    send = json.loads(recorder.incoming({"id": 2, "command": "get_program",
                                         "args": {"program_id": "prog_3f9a12c0"}})[0])
    assert send["send"]["args"]["program_id"] == "<var:program_id_1>"
    got = json.loads(recorder.outgoing({"id": 2, "success": False, "error": {
        "type": "not_found", "message": "program 'prog_3f9a12c0' not found",
        "details": {"program_id": "prog_3f9a12c0"}}})[0])
    assert got["expect"]["error"]["message"] == "<any>"
    assert got["expect"]["error"]["details"]["program_id"] == "<var:program_id_1>"
    # Ids the host chose are kept as they are.
    recorder.incoming({"id": 3, "command": "create_program",
                       "args": {"program_id": "qa_2024_v1", "signature": "q -> a"}})
    mine = json.loads(recorder.outgoing(
        {"id": 3, "success": True, "result": {"program_id": "qa_2024_v1"}})[0])
    assert mine["expect"]["result"]["program_id"] == "qa_2024_v1"


def test_recorder_captures_callback_ids_and_their_replies_refer_to_them() -> None:
    recorder = TranscriptRecorder()
    recorder.incoming({"id": 1, "command": "execute_program", "args": {"program_id": "agent"},
                       "timeout_ms": 30000})
    callback = json.loads(recorder.outgoing({
        "event": "callback", "callback_id": "cb-1", "request_id": 1, "session_id": "default",
        "function": "lookup_order", "purpose": "tool", "args": {"order_id": "A-17"},
        "timeout_ms": 29987})[0])
    # Short as it is, the id is the worker's; the time left is volatile.
    assert callback["expect_event"]["callback_id"] == "<any:callback_id_1>"
    assert callback["expect_event"]["timeout_ms"] == "<any>"
    assert callback["expect_event"]["request_id"] == 1
    send = json.loads(recorder.incoming({"id": "callback_reply:cb-1", "command": "callback_reply",
                                         "args": {"callback_id": "cb-1", "result": "ok"}})[0])
    assert send["send"]["args"]["callback_id"] == "<var:callback_id_1>"
    # The request id holds the callback id, but the host chose it: it stays as it is.
    assert send["send"]["id"] == "callback_reply:cb-1"
    reply = json.loads(recorder.outgoing({"id": "callback_reply:cb-1", "success": True,
                                          "result": {"accepted": True}})[0])
    assert reply["expect"]["id"] == "callback_reply:cb-1"
    abandoned = json.loads(recorder.outgoing({"event": "callback_abandoned",
                                              "callback_id": "cb-1", "request_id": 1,
                                              "reason": "timeout"})[0])
    assert abandoned["expect_event"]["callback_id"] == "<var:callback_id_1>"
    # A callback id the host made up (never issued) is the host's, not captured.
    recorder.incoming({"id": 2, "command": "callback_reply",
                       "args": {"callback_id": "cb-999", "result": 1}})
    unknown = json.loads(recorder.outgoing({"id": 2, "success": False, "error": {
        "type": "not_found", "message": "no callback 'cb-999'",
        "details": {"callback_id": "cb-999"}}})[0])
    assert unknown["expect"]["error"]["details"]["callback_id"] == "cb-999"


def test_recorder_pairs_nil_id_replies_with_what_it_saw() -> None:
    recorder = TranscriptRecorder()
    nil_reply = {"id": None, "success": False, "error": {"type": "invalid_request"}}
    recorder.incoming({"id": -1, "command": "ping"})
    assert json.loads(recorder.outgoing(nil_reply)[0]) == {"expect": nil_reply}
    # A frame that was no map never reached the recorder: its reply becomes a comment.
    (comment,) = recorder.outgoing(nil_reply)
    assert comment.startswith("# ") and tx.parse(comment) == []


def test_record_flag_is_left_out_of_the_recorded_worker_args() -> None:
    argv = ["--enable-test-commands", "--record", "x.jsonl", "--max-in-flight", "4",
            "--record=y.jsonl"]
    assert worker_args_without_record(argv) == ["--enable-test-commands", "--max-in-flight", "4"]


# ----- replay against real workers -----


def replay(text: str, **options: Any) -> ReplayResult:
    return replay_text(text, name="t.jsonl", cwd=REPO, **options)


def test_a_mismatch_reports_the_line_and_a_diff_at_the_path() -> None:
    result = replay(
        '{"send": {"id": 1, "command": "ping"}}\n'
        '{"expect": {"id": 1, "success": true, "result": {"status": "fine"}}}\n'
    )
    assert not result.passed
    report = result.report()
    assert report.splitlines()[:4] == [
        "FAIL t.jsonl (line 2): the response to id 1 does not match",
        "  at result.status: value differs",
        '      expected: "fine"',
        '      actual:   "ok"',
    ]
    assert "expected (line 2):" in report and '"worker_id": ' in report


def test_responses_are_matched_by_id_whatever_their_order() -> None:
    result = replay(
        TEST_COMMANDS
        + '{"send": {"id": "a", "command": "sleep", "args": {"ms": 200}}}\n'
        + '{"send": {"id": "b", "command": "echo", "args": {"value": 1}}}\n'
        + '{"expect": {"id": "a", "success": true}}\n'
        + '{"expect": {"id": "b", "success": true, "result": 1}}\n'
    )
    assert result.passed, result.report()


def test_expecting_an_id_never_sent_or_already_answered_fails_at_once() -> None:
    never = replay('{"send": {"id": 1, "command": "ping"}}\n{"expect": {"id": 2}}\n')
    assert never.failure is not None and "was never sent" in never.failure.message
    assert never.failure.line == 2 and "at id:" in never.report()
    twice = replay(
        '{"send": {"id": 1, "command": "ping"}}\n{"expect": {"id": 1}}\n{"expect": {"id": 1}}\n'
    )
    assert twice.failure is not None and "already been answered" in twice.failure.message


def test_an_unmet_event_times_out_with_the_closest_event_as_diff() -> None:
    result = replay('{"expect_event": {"event": "ready", "protocol_version": 99}}\n',
                    timeout=0.5)
    assert result.failure is not None
    assert "timed out after 0.5 s" in result.failure.message
    assert "at protocol_version: value differs" in result.report()


def test_a_response_that_never_comes_times_out() -> None:
    # The timeout bounds every expectation: it must let the worker come up and answer
    # the ping (which makes sure it has logged), and then it runs out on the sleep.
    result = replay(
        TEST_COMMANDS
        + '{"send": {"id": 0, "command": "ping"}}\n'
        + '{"expect": {"id": 0, "success": true}}\n'
        + '{"send": {"id": 1, "command": "sleep", "args": {"ms": 60000}}}\n'
        + '{"expect": {"id": 1, "success": true}}\n',
        timeout=5.0,
    )
    assert result.failure is not None and result.failure.line == 5, result.report()
    assert "timed out after 5 s waiting for a response to id 1" in result.failure.message
    assert "worker stderr (last lines):" in result.report()
    assert "worker_started" in result.report()


FAKE_WORKER = """
import struct, sys, msgpack
ready = msgpack.packb({"event": "ready", "protocol_version": 1})
sys.stdout.buffer.write(struct.pack(">I", len(ready)) + ready)
sys.stdout.buffer.flush()
sys.stdin.buffer.read(4)
print("fake worker dies", file=sys.stderr)
sys.exit(3)
"""


def test_a_worker_that_exits_unexpectedly_fails_the_replay() -> None:
    result = replay(
        '{"send": {"id": 1, "command": "ping"}}\n{"expect": {"id": 1}}\n',
        worker_command=[sys.executable, "-c", FAKE_WORKER],
    )
    assert result.failure is not None and result.failure.line == 2
    assert result.failure.message == (
        "the worker exited unexpectedly (exit code 3) while waiting for a response to id 1"
    )
    assert "| fake worker dies" in result.report()


def test_bad_worker_flags_show_the_workers_stderr() -> None:
    result = replay('{"worker_args": ["--no-such-flag"]}\n{"send": {"id": 1, "command": "ping"}}\n')
    assert result.failure is not None
    assert "no-such-flag" in result.report()


def test_shutdown_must_end_in_exit_code_zero_and_eof_too() -> None:
    result = replay('{"send": {"id": 1, "command": "shutdown", "args": {"grace_ms": 0}}}\n')
    assert result.passed, result.report()
    # A refused shutdown leaves the worker running: replay ends it by closing stdin.
    refused = replay('{"send": {"id": 1, "command": "shutdown", "args": {"grace_ms": -1}}}\n'
                     '{"expect": {"id": 1, "success": false}}\n')
    assert refused.passed, refused.report()


def test_strict_mode_fails_on_responses_nobody_expected() -> None:
    # Both pings are answered in order, so the first reply is in before the second.
    text = (
        '{"send": {"id": 1, "command": "ping"}}\n'
        '{"send": {"id": 2, "command": "ping"}}\n'
        '{"expect": {"id": 2, "success": true}}\n'
    )
    assert replay(text).passed
    strict = replay(text, strict=True)
    assert strict.failure is not None and "no expect consumed" in strict.failure.message


def test_each_worker_args_step_starts_a_fresh_worker() -> None:
    result = replay(
        TEST_COMMANDS
        + '{"send": {"id": 1, "command": "echo", "args": {"value": 1}}}\n'
        + '{"expect": {"id": 1, "success": true}}\n'
        + '{"worker_args": []}\n'
        + '{"send": {"id": 1, "command": "echo", "args": {"value": 1}}}\n'
        + '{"expect": {"id": 1, "success": false, "error": {"type": "unknown_command"}}}\n'
        + '{"send": {"id": 2, "command": "get_stats"}}\n'
        + '{"expect": {"id": 2, "result": {"requests": {}}}}\n'
    )
    assert result.passed, result.report()


def test_variables_must_be_captured_before_use() -> None:
    result = replay('{"send": {"id": 1, "command": "cancel", "args": {"request_id": "<var:x>"}}}\n')
    assert result.failure is not None and "<var:x>" in result.failure.message


def test_cli_prints_a_line_per_file_and_exits_non_zero_on_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.jsonl"
    expect = '{"expect": {"id": 1, "success": true}}\n'
    good.write_text('{"send": {"id": 1, "command": "ping"}}\n' + expect)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"send": {"id": 1, "command": "echo"}}\n' + expect)
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{nope\n")
    assert main([str(good)]) == 0
    assert main([str(good), str(bad), str(broken), str(tmp_path / "missing.jsonl"),
                 "--timeout", "5"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"PASS {good} (2 steps")
    assert out[1] == "1 passed, 0 failed"
    assert out[2].startswith(f"PASS {good}")
    assert out[3] == f"FAIL {bad} (line 2): the response to id 1 does not match"
    assert any(line.startswith(f"FAIL {broken} (line 1): unreadable transcript") for line in out)
    assert any(line.startswith(f"FAIL {tmp_path / 'missing.jsonl'}: cannot read") for line in out)
    assert out[-1] == "1 passed, 3 failed"


def test_cli_worker_args_may_start_with_dashes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "echo.jsonl"
    path.write_text('{"send": {"id": 1, "command": "echo", "args": {"value": 5}}}\n'
                    '{"expect": {"id": 1, "success": true, "result": 5}}\n')
    assert main([str(path), "--worker-arg", "--enable-test-commands",
                 "--worker-arg", "--max-in-flight", "--worker-arg", "3"]) == 0
    assert main([str(path), "--", "--enable-test-commands", "--max-in-flight", "3"]) == 0
    assert main([str(path)]) == 1
    capsys.readouterr()


def test_trace_shows_every_frame_in_and_out() -> None:
    lines: list[str] = []
    result = replay('{"send": {"id": 1, "command": "ping"}}\n{"expect": {"id": 1}}\n',
                    trace=lines.append)
    assert result.passed, result.report()
    assert lines[0].startswith("  (line 1) start: ") and lines[0].endswith("-m dspy_bridge")
    assert lines[1].startswith('  < {"event": "ready"')
    assert lines[2] == '  (line 1) > {"id": 1, "command": "ping"}'
    assert lines[3].startswith('  < {"id": 1, "success": true')


def test_the_console_script_runs_replay() -> None:
    transcript = REPO / "tests" / "transcripts" / "ping.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "dspy_bridge", "replay", str(transcript), "--timeout", "10"],
        capture_output=True, text=True, timeout=60, cwd=REPO, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith(f"PASS {transcript}")


# ----- record, replay, mutate -----


SECRETS = ("sk-test-SECRET-0042", "sk-live-KEY-77777777")


def drive_session(worker: WorkerProcess) -> None:
    """A host's session (the shared test client, not the replay tool): control and test
    commands with concurrency, then DSPy commands with a key and a generated id."""
    assert worker.call("ping")["status"] == "ok"
    slow = worker.start("sleep", {"ms": 60000})
    assert worker.call("cancel", {"request_id": slow}) == {"cancelled": True}
    assert worker.response(slow)["error"]["type"] == "cancelled"
    value = {"bytes": b"\x00\x01", "text": "t", "n": [1, 2.5, None, True], "api_key": SECRETS[0]}
    assert worker.call("echo", {"value": value}) == value
    timed = worker.start("sleep", {"ms": 5000}, timeout_ms=20)
    assert worker.request("sleep", {"ms": "x"})["error"]["type"] == "invalid_args"
    assert worker.request("fail")["error"]["type"] == "internal"
    assert worker.request("nope")["error"]["type"] == "unknown_command"
    assert worker.response(timed)["error"]["type"] == "timeout"
    worker.call("get_stats")
    lm = {"model": "mock/rec", "api_key": SECRETS[1],
          "extra": {"responses": {"What is 2+2?": "4"}, "default": "?"}}
    assert worker.call("configure_lm", lm)["lm"]["api_key"] == "<redacted>"
    program = worker.call("create_program", {"signature": "question -> answer"})["program_id"]
    ran = worker.call("execute_program", {"program_id": program,
                                          "inputs": {"question": "What is 2+2?"}})
    assert ran["outputs"] == {"answer": "4"}
    assert worker.call("get_program", {"program_id": program})["program_id"] == program
    missing = worker.request("get_program", {"session_id": "other", "program_id": program})
    assert missing["error"]["type"] == "not_found"
    document = worker.call("export_program", {"program_id": program})["document"]
    worker.call("import_program", {"session_id": "copy", "program_id": "copied",
                                   "document": document})
    worker.call("list_sessions")
    worker.call("get_usage")
    worker.send({"id": None, "command": "ping"})
    worker.send([1, 2])
    for _ in range(2):
        assert worker.response(None)["error"]["type"] in {"invalid_request", "invalid_frame"}
    assert worker.call("shutdown", {"grace_ms": 1000})["shutting_down"]
    assert worker.wait_exit(10) == 0


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("record") / "session.jsonl"
    worker = WorkerProcess("--enable-test-commands", "--record", str(path))
    try:
        drive_session(worker)
    finally:
        worker.close()
    yield path


def test_a_recorded_session_replays_as_is(recorded: Path) -> None:
    text = recorded.read_text()
    for secret in SECRETS:
        assert secret not in text
    steps = tx.parse(text)
    assert isinstance(steps[0], tx.WorkerArgs)
    assert steps[0].args == ("--enable-test-commands",)
    # The frame [1, 2] is no map: neither it nor its reply can be replayed (a comment).
    sends = sum(isinstance(step, tx.Send) for step in steps)
    assert sends == sum(isinstance(step, tx.Expect) for step in steps) == 20
    assert "# (a frame that was not a msgpack map cannot be recorded" in text
    assert '"program_id": "<any:program_id_1>"' in text
    assert '"program_id": "<var:program_id_1>"' in text
    result = replay_file(recorded, cwd=REPO)
    assert result.passed, result.report()
    assert main([str(recorded)]) == 0


def test_recording_appends_sessions_that_each_replay_on_a_fresh_worker(tmp_path: Path) -> None:
    path = tmp_path / "two.jsonl"
    for value in ("first", "second"):
        with WorkerClient(["--enable-test-commands", "--record", str(path)], cwd=REPO) as worker:
            worker.wait_event("ready")
            assert worker.request({"id": 1, "command": "echo", "args": {"value": value}})[
                "result"] == value
    steps = tx.parse(path.read_text())
    assert sum(isinstance(step, tx.WorkerArgs) for step in steps) == 2
    result = replay_file(path, cwd=REPO)
    assert result.passed, result.report()


def test_a_recorded_session_with_callbacks_replays_as_is(tmp_path: Path) -> None:
    """Callbacks answered by the client's Python functions are recorded as `expect_event`
    and `send` steps tied by the captured callback id, and replay as they are."""
    path = tmp_path / "callbacks.jsonl"
    with WorkerClient(["--record", str(path)], cwd=REPO) as worker:
        worker.wait_event("ready", 60)
        worker.register_function("lookup_order", lambda order_id: {"status": "shipped"},
                                 parameters={"type": "object",
                                             "properties": {"order_id": {"type": "string"}}})
        worker.register_tools(timeout=60)
        steps = [
            {"next_thought": "Look.", "next_tool_name": "lookup_order",
             "next_tool_args": {"order_id": "A-17"}},
            {"next_thought": "Done.", "next_tool_name": "finish", "next_tool_args": {}},
            {"reasoning": "Shipped.", "answer": "It has shipped."},
        ]
        worker.call("create_program", {
            "program_id": "agent", "signature": "question -> answer", "program_type": "react",
            "options": {"tools": ["lookup_order"]},
            "lm": {"model": "mock/agent", "extra": {"sequence": steps}}}, 60)
        ran = worker.call("execute_program", {"program_id": "agent",
                                              "inputs": {"question": "Where is A-17?"}}, 60,
                          timeout_ms=60000)
        assert ran["trajectory"][0]["observation"] == {"status": "shipped"}
        (callback,) = worker.callbacks
        assert callback.wait(60) and callback.accepted
    text = path.read_text()
    assert '"callback_id": "<any:callback_id_1>"' in text
    assert '"callback_id": "<var:callback_id_1>"' in text
    recorded = tx.parse(text)
    assert [step.message["event"] for step in recorded if isinstance(step, tx.ExpectEvent)] == [
        "ready", "callback"]
    result = replay_file(path, cwd=REPO, timeout=60)
    assert result.passed, result.report()


def leaves(value: Any, path: tx.Path = ()) -> Iterator[tuple[tx.Path, Any]]:
    """Every leaf of a JSON value worth mutating (a `$bin` object counts as one leaf)."""
    if isinstance(value, dict) and not (len(value) == 1 and "$bin" in value):
        for key, item in value.items():
            yield from leaves(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from leaves(item, (*path, index))
    elif not (isinstance(value, str) and value.startswith(("<any", "<var:"))):
        yield path, value


def mutated(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1000
    if isinstance(value, str):
        return value + "~"
    if isinstance(value, dict):
        return {"$bin": tx.to_json(tx.from_json(value) + b"!")["$bin"]}
    return "mutated"  # nil


def set_path(value: Any, path: tx.Path, new: Any) -> None:
    for part in path[:-1]:
        value = value[part]
    value[path[-1]] = new


def mutants(lines: list[str]) -> Iterator[tuple[int, tx.Path, dict[str, Any], str]]:
    """(line number, path, mutated step, mutated transcript) for every expected leaf."""
    for number, line in enumerate(lines, start=1):
        if not line.startswith('{"expect'):
            continue
        step = json.loads(line)
        (kind,) = step
        for path, value in leaves(step[kind]):
            changed = copy.deepcopy(step)
            set_path(changed[kind], path, mutated(value))
            text = "\n".join([*lines[: number - 1], json.dumps(changed), *lines[number:]])
            yield number, path, changed[kind], text


def test_changing_any_expected_value_breaks_the_match_at_that_value(recorded: Path) -> None:
    """Every leaf of every expectation, against the actual messages of a real replay."""
    lines = recorded.read_text().splitlines()
    result = replay_file(recorded, cwd=REPO)
    assert result.passed, result.report()
    actual_at = dict(result.matched)
    # The captures (<any:NAME>) each line sees, as replay had them.
    bindings_at: dict[int, tx.Bindings] = {}
    bindings: tx.Bindings = {}
    for number, actual in result.matched:
        bindings_at[number] = bindings
        step = tx.parse_step(json.loads(lines[number - 1]), number)
        assert isinstance(step, tx.Expect | tx.ExpectEvent)
        bindings = tx.match(step.message, actual, bindings).bindings
    count = 0
    for number, path, expected, _text in mutants(lines):
        count += 1
        found = tx.match(tx.from_json(expected), actual_at[number], bindings_at[number]).mismatch
        assert found is not None, f"mutating line {number} at {path} went unnoticed"
        assert found.path == path, (number, path, found.describe())
    assert count > 40


def test_changing_an_expected_value_fails_the_replay_with_a_diff_at_it(recorded: Path) -> None:
    """Real replays of mutants: the last leaf of every third expectation line changed."""
    lines = recorded.read_text().splitlines()
    last: dict[int, tuple[tx.Path, str]] = {}
    for number, path, _expected, text in mutants(lines):
        last[number] = (path, text)
    assert len(last) >= 20
    chosen = sorted(last)[::3]

    def run(number: int) -> tuple[int, tx.Path, ReplayResult]:
        path, text = last[number]
        # Four workers loading DSPy at once on a loaded machine take seconds to answer
        # their first DSPy command: more than replay's default 10 s wait, not 20. (A
        # mutated event is only found missing when the wait ends, so not more.)
        return number, path, replay_text(text, name="mutant.jsonl", cwd=REPO, timeout=20)

    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = list(pool.map(run, chosen))
    for number, path, result in outcomes:
        assert result.failure is not None, f"mutating line {number} at {path} went unnoticed"
        assert result.failure.line == number, result.report()
        where = "at " + tx.format_path(path) + ":"
        assert where in result.report(), (where, result.report())
