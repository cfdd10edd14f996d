"""The worker core against a real spawned process over real pipes."""

from __future__ import annotations

import json
import os
import select
import signal
import struct
import subprocess
import sys
from typing import Any

import msgpack
import pytest

from dspy_bridge.protocol.peer import encode_message
from dspy_bridge.tools.client import WorkerExited
from tests.conftest import REPO, WorkerProcess


def assert_error(response: dict[str, Any], error_type: str) -> dict[str, Any]:
    assert response["success"] is False, response
    error = response["error"]
    assert error["type"] == error_type, response
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["retryable"], bool)
    return error  # type: ignore[no-any-return]


def assert_serving(worker: WorkerProcess) -> None:
    assert worker.call("ping")["status"] == "ok"


def wait_pid_gone(pid: int, timeout: float) -> bool:
    """Wait for any process (not only a child) to exit, via a pidfd."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        return bool(ready)
    finally:
        os.close(fd)


# ----- the ready event and control commands -----


def test_ready_event_describes_the_worker(worker: WorkerProcess) -> None:
    ready = worker.ready
    assert ready["protocol_version"] == 1
    assert ready["pid"] == worker.pid
    assert isinstance(ready["worker_id"], str)
    assert {"ping", "get_stats", "cancel", "shutdown", "sleep"} <= set(ready["commands"])
    assert {"bridge", "python", "dspy", "msgpack"} <= set(ready["versions"])
    assert "id" not in ready


def test_test_commands_are_off_by_default(spawn: Any) -> None:
    worker = spawn()
    assert "sleep" not in worker.ready["commands"]
    assert_error(worker.request("sleep", {"ms": 1}), "unknown_command")


def test_ping(worker: WorkerProcess) -> None:
    result = worker.call("ping")
    assert result["status"] == "ok"
    assert result["pid"] == worker.pid
    assert result["worker_id"] == worker.ready["worker_id"]
    assert result["in_flight"] == 0
    assert isinstance(result["uptime_s"], float)
    assert isinstance(result["dspy_loaded"], bool)


def test_ping_is_answered_while_work_runs(worker: WorkerProcess) -> None:
    slow = worker.start("sleep", {"ms": 60_000})
    result = worker.call("ping")
    assert result["in_flight"] == 1
    assert slow not in worker.responses
    assert worker.call("cancel", {"request_id": slow}) == {"cancelled": True}


def test_get_stats_counts_commands_errors_and_latency(worker: WorkerProcess) -> None:
    worker.call("ping")
    worker.call("sleep", {"ms": 1})
    worker.request("nope")
    worker.request("sleep", {"ms": "x"})
    stats = worker.call("get_stats")
    assert stats["requests"]["ping"] == 1
    assert stats["requests"]["sleep"] == 1
    assert stats["errors"] == {"unknown_command": 1, "invalid_args": 1}
    assert stats["latency_ms"]["sleep"]["count"] == 1
    assert stats["latency_ms"]["sleep"]["p95_ms"] >= 1
    assert stats["rss_bytes"] > 1_000_000
    assert stats["in_flight"] == 0 and stats["max_in_flight"] == 1


def test_responses_come_out_of_order_and_concurrently(worker: WorkerProcess) -> None:
    slow = worker.start("sleep", {"ms": 2000})
    fast = worker.start("sleep", {"ms": 1})
    first = worker.read_message()
    assert first["id"] == fast
    assert worker.response(slow)["result"] == {"slept_ms": 2000}


def test_hundreds_of_requests_run_at_once(worker: WorkerProcess) -> None:
    ids = [worker.start("sleep", {"ms": 300}) for _ in range(250)]
    for request_id in ids:
        assert worker.response(request_id)["result"] == {"slept_ms": 300}
    assert worker.call("get_stats")["max_in_flight"] == 250


def test_string_and_integer_ids_are_echoed_verbatim(worker: WorkerProcess) -> None:
    assert worker.request("ping", id="abc-1")["id"] == "abc-1"
    assert worker.request("ping", id=2**64 - 1)["id"] == 2**64 - 1
    assert worker.request("ping", id=0)["id"] == 0


def test_str_and_bin_stay_distinct(worker: WorkerProcess) -> None:
    value = {"s": "abc", "b": b"abc", "nested": [b"\x00\xff", "\u00e9"]}
    assert worker.call("echo", {"value": value}) == value


# ----- timeout and cancel -----


def test_timeout_abandons_the_work(worker: WorkerProcess) -> None:
    error = assert_error(worker.request("sleep", {"ms": 60_000}, timeout_ms=100), "timeout")
    assert error["retryable"] is True
    assert worker.call("get_stats")["in_flight"] == 0


def test_cancel_answers_the_cancelled_request_once(worker: WorkerProcess) -> None:
    slow = worker.start("sleep", {"ms": 60_000})
    assert worker.call("ping")["in_flight"] == 1
    assert worker.call("cancel", {"request_id": slow}) == {"cancelled": True}
    assert_error(worker.response(slow), "cancelled")
    assert worker.call("cancel", {"request_id": slow}) == {"cancelled": False}
    assert worker.call("cancel", {"request_id": "never-sent"}) == {"cancelled": False}
    assert_serving(worker)
    assert slow not in worker.responses


def test_duplicate_id_in_flight_is_refused(worker: WorkerProcess) -> None:
    worker.start("sleep", {"ms": 60_000}, id=7)
    error = assert_error(worker.request("ping", id=7), "invalid_request")
    assert error["details"]["errors"][0]["field"] == "id"
    assert worker.call("cancel", {"request_id": 7}) == {"cancelled": True}
    assert_error(worker.response(7), "cancelled")


def test_in_flight_limit_answers_limit_exceeded(spawn: Any) -> None:
    worker = spawn("--enable-test-commands", "--max-in-flight", "2")
    first = worker.start("sleep", {"ms": 60_000})
    second = worker.start("sleep", {"ms": 60_000})
    error = assert_error(worker.request("sleep", {"ms": 1}), "limit_exceeded")
    assert error["retryable"] is True
    assert_serving(worker)  # control commands are not counted against the limit
    worker.call("cancel", {"request_id": first})
    assert_error(worker.response(first), "cancelled")
    assert worker.call("sleep", {"ms": 1}) == {"slept_ms": 1}
    worker.call("cancel", {"request_id": second})


def test_handler_bug_is_an_internal_error_with_traceback(worker: WorkerProcess) -> None:
    error = assert_error(worker.request("fail"), "internal")
    assert "deliberate failure" in error["traceback"]
    assert_serving(worker)


# ----- bad input never kills the worker -----


BAD_FRAMES = {
    "garbage_bytes": (b"\xc1\xc1\xc1", "invalid_frame"),
    "truncated_value": (b"\x82\xa2id\x01", "invalid_frame"),
    "two_values": (msgpack.packb({"id": 1, "command": "ping"}) + b"\xc0", "invalid_frame"),
    "non_map_array": (msgpack.packb([1, 2, 3]), "invalid_frame"),
    "non_map_int": (msgpack.packb(5), "invalid_frame"),
    "non_map_nil": (msgpack.packb(None), "invalid_frame"),
    "empty_frame": (b"", "invalid_frame"),
    "deep_nesting": (b"\x91" * 100_000 + b"\xc0", "invalid_frame"),
    "invalid_utf8": (b"\x82\xa2id\x01\xa7command\xa2\xff\xfe", "invalid_frame"),
    "ext_as_map_key": (b"\x81\xd4\x01\x00\x01", "invalid_request"),
}


@pytest.mark.parametrize("name", list(BAD_FRAMES))
def test_bad_frames_get_a_typed_error_and_serving_continues(
    worker: WorkerProcess, name: str
) -> None:
    payload, error_type = BAD_FRAMES[name]
    worker.send_frame(payload)
    reply = worker.read_message()
    assert reply["id"] is None
    assert_error(reply, error_type)
    assert_serving(worker)


BAD_REQUESTS: dict[str, tuple[dict[Any, Any], str, str]] = {
    "missing_id": ({"command": "ping"}, "invalid_request", "id"),
    "negative_id": ({"id": -5, "command": "ping"}, "invalid_request", "id"),
    "float_id": ({"id": 1.5, "command": "ping"}, "invalid_request", "id"),
    "missing_command": ({"id": 1000}, "invalid_request", "command"),
    "command_not_str": ({"id": 1000, "command": 3}, "invalid_request", "command"),
    "args_not_map": ({"id": 1000, "command": "ping", "args": "x"}, "invalid_request", "args"),
    "timeout_zero": (
        {"id": 1000, "command": "ping", "timeout_ms": 0},
        "invalid_request",
        "timeout_ms",
    ),
    "timeout_nan": (
        {"id": 1000, "command": "ping", "timeout_ms": float("nan")},
        "invalid_request",
        "timeout_ms",
    ),
    "timeout_bool": (
        {"id": 1000, "command": "ping", "timeout_ms": True},
        "invalid_request",
        "timeout_ms",
    ),
    "unknown_envelope_key": (
        {"id": 1000, "command": "ping", "argz": {}},
        "invalid_request",
        "argz",
    ),
    "args_wrong_type": (
        {"id": 1000, "command": "sleep", "args": {"ms": "5"}},
        "invalid_args",
        "ms",
    ),
    "args_missing": ({"id": 1000, "command": "sleep", "args": {}}, "invalid_args", "ms"),
    "args_unknown_key": (
        {"id": 1000, "command": "sleep", "args": {"ms": 1, "x": 2}},
        "invalid_args",
        "x",
    ),
    "args_nan": (
        {"id": 1000, "command": "sleep", "args": {"ms": float("nan")}},
        "invalid_args",
        "ms",
    ),
    "args_huge_int": (
        {"id": 1000, "command": "sleep", "args": {"ms": 2**64 - 1}},
        "invalid_args",
        "ms",
    ),
    "args_negative_huge": (
        {"id": 1000, "command": "sleep", "args": {"ms": -(2**63)}},
        "invalid_args",
        "ms",
    ),
    "cancel_bad_id": (
        {"id": 1000, "command": "cancel", "args": {"request_id": [1]}},
        "invalid_args",
        "request_id",
    ),
    "shutdown_negative_grace": (
        {"id": 1000, "command": "shutdown", "args": {"grace_ms": -1}},
        "invalid_args",
        "grace_ms",
    ),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_bad_requests_name_the_field(worker: WorkerProcess, name: str) -> None:
    message, error_type, field = BAD_REQUESTS[name]
    worker.send(message)
    reply = worker.read_message()
    # A request whose own id is unusable is answered under id nil.
    assert reply["id"] == (None if name in {"missing_id", "negative_id", "float_id"} else 1000)
    error = assert_error(reply, error_type)
    assert field in [entry["field"] for entry in error["details"]["errors"]], error
    assert_serving(worker)


def test_unknown_command_lists_the_known_ones(worker: WorkerProcess) -> None:
    error = assert_error(worker.request("frobnicate"), "unknown_command")
    assert "frobnicate" in error["message"]
    assert "ping" in error["details"]["known"]


def test_oversized_frame_is_skipped_and_serving_continues(spawn: Any) -> None:
    worker = spawn("--max-frame-bytes", "1024")
    payload = msgpack.packb({"id": 1, "command": "ping", "args": {"pad": "x" * 5000}})
    worker.send_frame(payload)
    error = assert_error(worker.read_message(), "invalid_frame")
    assert error["details"] == {
        "length": len(payload), "limit": "max_frame_bytes", "max_frame_bytes": 1024
    }
    assert_serving(worker)


def test_frames_split_across_writes_and_coalesced(worker: WorkerProcess) -> None:
    frames = b"".join(
        struct.pack(">I", len(p)) + p
        for p in (msgpack.packb({"id": i, "command": "ping"}) for i in range(100, 105))
    )
    for offset in range(0, len(frames), 3):
        worker.send_raw(frames[offset : offset + 3])
    for request_id in range(100, 105):
        assert worker.response(request_id)["success"] is True


def test_stray_stdout_writes_never_corrupt_frames(worker: WorkerProcess) -> None:
    assert worker.call("stdout_noise", {"text": "\x01\x02\x03\x04oops\n"}) == {"written": 3}
    assert_serving(worker)
    assert worker.stderr_text().count("oops") >= 1


def test_python_prints_become_json_log_lines(worker: WorkerProcess) -> None:
    """A library's `print` (DSPy's BestOfN prints each failed attempt) is a JSON line
    naming the request, not raw text among the log lines."""
    worker.call("stdout_noise", {"text": "half a line, "})  # held until its newline
    request_id = worker.start("stdout_noise", {"text": "the rest\n"})
    worker.response(request_id)
    worker.call("shutdown", {"grace_ms": 0})
    worker.wait_exit(30)
    printed = [line for line in map(_json_or_none, worker.stderr_text().splitlines())
               if line is not None and line.get("event") == "printed"]
    assert {"stream": "stdout", "text": "half a line, the rest", "id": request_id,
            "command": "stdout_noise"}.items() <= next(
        line for line in printed if "the rest" in line["text"]).items()


def _json_or_none(line: str) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


# ----- lifecycle -----


def test_eof_exits_promptly_even_with_work_in_flight(worker: WorkerProcess) -> None:
    worker.start("sleep", {"ms": 60_000})
    worker.call("ping")
    assert worker.process.stdin
    worker.process.stdin.close()
    assert worker.wait_exit(timeout=1.5) == 0


def test_shutdown_lets_in_flight_work_finish(worker: WorkerProcess) -> None:
    slow = worker.start("sleep", {"ms": 300})
    result = worker.call("shutdown", {"grace_ms": 10_000})
    assert result == {"shutting_down": True, "grace_ms": 10_000, "in_flight": 1}
    assert_error(worker.request("sleep", {"ms": 1}), "shutting_down")
    assert worker.call("ping")["status"] == "shutting_down"
    assert worker.response(slow)["result"] == {"slept_ms": 300}
    assert worker.wait_exit() == 0


def test_shutdown_grace_expiry_answers_abandoned_work(worker: WorkerProcess) -> None:
    slow = worker.start("sleep", {"ms": 60_000})
    worker.call("shutdown", {"grace_ms": 50})
    error = assert_error(worker.response(slow), "shutting_down")
    assert error["retryable"] is True
    assert worker.wait_exit() == 0


def test_sigterm_is_a_graceful_shutdown(worker: WorkerProcess) -> None:
    slow = worker.start("sleep", {"ms": 200})
    worker.call("ping")
    worker.process.send_signal(signal.SIGTERM)
    assert worker.response(slow)["result"] == {"slept_ms": 200}
    assert worker.wait_exit() == 0


def test_worker_exits_when_its_parent_dies_without_closing_stdin(tmp_path: Any) -> None:
    """The host vanishes (kill -9) while something else still holds the worker's stdin."""
    pid_file = tmp_path / "pid"
    read_end, write_end = os.pipe()
    intermediate = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys; p = subprocess.Popen([sys.executable, '-m', 'dspy_bridge']); "
            f"open({str(pid_file)!r}, 'w').write(str(p.pid)); p.wait()",
        ],
        cwd=REPO,
        stdin=read_end,
        stdout=subprocess.PIPE,
    )
    os.close(read_end)
    try:
        worker_pid = _await_pid_file(pid_file, intermediate)
        # The worker writes its ready frame to the stdout it inherited: it is up and watching.
        assert intermediate.stdout and len(intermediate.stdout.read(4)) == 4
        intermediate.kill()
        intermediate.wait()
        assert wait_pid_gone(worker_pid, timeout=2.0), "worker outlived its host"
    finally:
        os.close(write_end)


def _await_pid_file(pid_file: Any, process: subprocess.Popen[bytes]) -> int:
    # The only thing to wait on is a file another process writes: poll it, bounded.
    for _ in range(200):
        if pid_file.exists() and pid_file.read_text():
            return int(pid_file.read_text())
        assert process.poll() is None
        select.select([], [], [], 0.05)
    raise AssertionError("the intermediate process never reported the worker pid")


# ----- logging -----


def test_one_json_log_line_per_request_on_stderr(worker: WorkerProcess) -> None:
    worker.call("ping", id="log-me")
    worker.request("sleep", {"ms": "bad"}, id="log-me-too")
    worker.close()
    lines = [json.loads(line) for line in worker.stderr_text().splitlines() if line.startswith("{")]
    requests = {line["id"]: line for line in lines if line["event"] == "request"}
    assert requests["log-me"]["command"] == "ping"
    assert requests["log-me"]["outcome"] == "ok"
    assert isinstance(requests["log-me"]["duration_ms"], float)
    assert requests["log-me-too"]["outcome"] == "invalid_args"
    assert requests["log-me-too"]["command"] == "sleep"
    assert isinstance(requests["log-me-too"]["duration_ms"], float)
    assert all(line["level"] in {"info", "warning", "error", "debug"} for line in lines)


def test_log_lines_name_the_worker_and_the_request_and_session(spawn: Any) -> None:
    worker = spawn("--enable-test-commands")
    worker.call("ping", id="p")
    worker.call("configure_lm", {"session_id": "acme", "model": "mock"}, id="c", timeout_ms=60_000)
    worker.call("list_programs", {}, id="l")
    assert worker.request("fail", id="f")["error"]["type"] == "internal"
    worker.call("ping", id="last")
    worker.close()
    lines = [json.loads(line) for line in worker.stderr_text().splitlines() if line.startswith("{")]
    assert {line["worker_id"] for line in lines} == {worker.ready["worker_id"]}
    requests = {line["id"]: line for line in lines if line["event"] == "request"}
    assert "session_id" not in requests["p"]
    assert requests["c"]["session_id"] == "acme"
    assert requests["l"]["session_id"] == "default"
    # a line logged by the handler's own task names its request too
    [failed] = [line for line in lines if line["event"] == "handler_failed"]
    assert (failed["id"], failed["command"]) == ("f", "fail")
    # and a line the loop logs after them names none (a control command's naming ended)
    [gone] = [line for line in lines if line["event"] == "host_gone"]
    assert "id" not in gone and "command" not in gone


def test_log_lines_of_requests_answered_together_keep_their_own_session(
    worker: WorkerProcess,
) -> None:
    ids = [worker.start("list_programs", {"session_id": f"s{n}"}) for n in range(60)]
    for request_id in ids:
        assert worker.response(request_id)["success"]
    worker.close()
    lines = [json.loads(line) for line in worker.stderr_text().splitlines() if line.startswith("{")]
    sessions = {line["id"]: line["session_id"] for line in lines if line["event"] == "request"}
    assert [sessions[request_id] for request_id in ids] == [f"s{n}" for n in range(60)]


def test_requests_read_together_each_get_one_whole_log_line(worker: WorkerProcess) -> None:
    """Pings (answered at once) and refusals read in one go, their lines written together:
    every request has exactly one line, each a whole JSON object."""
    worker.send_raw(b"".join(
        encode_message({"id": n, "command": "ping" if n % 3 else "no_such_command"})
        for n in range(400)
    ))
    for n in range(400):
        assert worker.response(n)["success"] is bool(n % 3)
    worker.close()
    lines = [json.loads(line) for line in worker.stderr_text().splitlines()]
    ids = sorted(line["id"] for line in lines if line["event"] == "request")
    assert ids == list(range(400))


def test_log_level_flag_filters(spawn: Any) -> None:
    worker = spawn("--log-level", "warning")
    worker.call("ping")
    worker.close()
    assert '"event": "request"' not in worker.stderr_text()


@pytest.mark.parametrize("flag, value", [
    ("--max-in-flight", "0"), ("--max-in-flight", "many"),
    ("--busy-wait-us", "-1"), ("--busy-wait-us", "10001"), ("--busy-wait-us", "1.5"),
])
def test_bad_flag_values_are_refused_at_start(flag: str, value: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dspy_bridge", flag, value],
        cwd=REPO,
        capture_output=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2
    assert flag.encode() in result.stderr
    assert result.stdout == b""


@pytest.mark.parametrize("busy_wait_us", ["0", "200"])  # sleeping at once; polling longer
def test_a_busy_waiting_worker_serves_work_and_control(spawn: Any, busy_wait_us: str) -> None:
    worker = spawn("--busy-wait-us", busy_wait_us, "--enable-test-commands")
    for n in range(20):  # one at a time: each request comes while the loop polls or sleeps
        assert worker.call("ping")["status"] == "ok"
        assert worker.call("echo", {"value": n}) == n  # a task, not a control command


@pytest.mark.parametrize("flag", ["--help", "-h", "--version"])
def test_help_and_version_go_to_stdout_and_speak_no_protocol(flag: str) -> None:
    from dspy_bridge import __version__

    result = subprocess.run(
        [sys.executable, "-P", "-m", "dspy_bridge", "--max-in-flight", "5", flag],
        capture_output=True, timeout=30, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0 and result.stderr == b""
    text = result.stdout.decode()
    if flag == "--version":
        assert text == f"dspy-bridge {__version__} (protocol 1)\n"
    else:
        assert text.startswith("usage: dspy-bridge") and "--max-frame-bytes" in text


def test_registry_names_every_command_its_tables_define() -> None:
    from dspy_bridge.commands.registry import LoadingTable, command_names

    for include_test_only in (True, False):
        table = LoadingTable(include_test_only=include_test_only)
        assert table.names() == command_names(include_test_only=include_test_only)
        table.load_all()
        for name in table.names():
            spec = table.get(name)
            assert spec is not None and spec.name == name
    assert LoadingTable(include_test_only=False).get("sleep") is None  # a test command


def test_a_table_that_disagrees_with_the_registry_is_refused_when_loaded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dspy_bridge.commands import registry

    monkeypatch.setitem(registry.COMMANDS, "not_in_any_table", "dspy_bridge.commands.control")
    table = registry.LoadingTable(include_test_only=False)
    with pytest.raises(RuntimeError, match="missing in the table \\['not_in_any_table'\\]"):
        table.get("ping")


def test_worker_serves_and_exits_when_its_stderr_is_gone() -> None:
    """Logging to a stderr nobody reads any more must never block replies or the exit."""
    process = subprocess.Popen(
        [sys.executable, "-m", "dspy_bridge"],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdin and process.stdout and process.stderr
    process.stderr.close()
    ready_length = struct.unpack(">I", process.stdout.read(4))[0]
    process.stdout.read(ready_length)
    ping = msgpack.packb({"id": 1, "command": "ping"})
    process.stdin.write(struct.pack(">I", len(ping)) + ping)
    process.stdin.flush()
    length = struct.unpack(">I", process.stdout.read(4))[0]
    assert msgpack.unpackb(process.stdout.read(length))["success"] is True
    process.stdin.close()
    assert process.wait(timeout=2) == 0


def test_every_request_the_worker_reads_is_answered_even_after_shutdown() -> None:
    """A request that races the exit is either never read (the host sees EOF) or answered;
    never read, logged and dropped."""
    for _ in range(5):
        worker = WorkerProcess()
        worker.call("shutdown", {"grace_ms": 0})
        late = worker.new_id()
        try:
            worker.start("ping", id=late)  # the worker may be gone already: never read
            reply: dict[str, Any] | None = worker.response(late, timeout=10)
        except WorkerExited:
            reply = None
        worker.close()
        logged = [
            json.loads(line)
            for line in worker.stderr_text().splitlines()
            if line.startswith("{") and '"event": "request"' in line
        ]
        if any(line["id"] == late for line in logged):
            assert reply is not None, "the worker read the request but never answered it"
        # (Log lines go out after their reply, best effort at the exit: an answered
        # request may lack its line, never the other way round.)
        if reply is not None:
            assert reply["success"] is False
            assert reply["error"]["type"] == "shutting_down"


def test_sigterm_right_after_ready_is_still_graceful(spawn: Any) -> None:
    """The worker's modules are still loading when `ready` goes out; a SIGTERM then must
    not kill it outright."""
    codes = []
    for _ in range(3):
        worker = spawn()
        worker.process.send_signal(signal.SIGTERM)
        codes.append(worker.wait_exit(timeout=10))
    assert codes == [0, 0, 0]


def test_ready_versions_agree_with_importlib_metadata() -> None:
    """`ready` reads versions from the .dist-info directory names, to spare start-up the
    import of importlib.metadata; the two must agree, and an unknown name is missing."""
    from importlib import metadata

    from dspy_bridge.startup import installed_versions

    names = ("dspy", "msgpack", "pydantic", "pydantic_core", "typing-extensions", "litellm")
    found = installed_versions((*names, "no-such-distribution"))
    assert found == {**{name: metadata.version(name) for name in names},
                     "no-such-distribution": "missing"}
