"""Hardening: bad requests, hostile hosts and providers never break a worker or a tenant."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dspy_bridge.protocol.framing import FrameDecoder, encode_frame
from tests.conftest import REPO
from tests.test_worker import assert_error, assert_serving

# ----- the engine load is a state, never cancelled by a request that waited for it -----


@pytest.mark.parametrize("how", ["timeout", "cancel"])
def test_giving_up_on_a_request_waiting_for_dspy_never_breaks_the_engine(
    spawn: Any, how: str
) -> None:
    worker = spawn()
    assert worker.call("ping")["engine"] == "loading"  # the request below must wait for DSPy
    if how == "timeout":
        gave_up = worker.request("configure_lm", {"model": "mock"}, timeout_ms=1)
        assert_error(gave_up, "timeout")
    else:
        waiting = worker.start("configure_lm", {"model": "mock"})
        cancel = worker.call("cancel", {"request_id": waiting})
        assert cancel == {"cancelled": True}
        assert_error(worker.response(waiting), "cancelled")
    assert_serving(worker)
    assert worker.call("configure_lm", {"model": "mock"})["scope"] == "worker"
    assert worker.call("ping")["engine"] == "ready"


def test_an_engine_that_fails_to_load_is_a_typed_state(spawn: Any, tmp_path: Path) -> None:
    broken = tmp_path / "dspy"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise ImportError('broken dspy for the test')\n")
    worker = spawn(env={"PYTHONPATH": str(tmp_path)})
    event = worker.next_event("engine_failed")
    assert event["error"]["type"] == "engine_unavailable"
    assert "broken dspy for the test" in event["error"]["message"]
    ping = worker.call("ping")
    assert (ping["status"], ping["engine"]) == ("engine_failed", "failed")
    assert ping["dspy_loaded"] is False
    for command, args in [
        ("configure_lm", {"model": "mock"}),
        ("create_program", {"signature": "q -> a"}),
        ("configure_cache", {}),
        ("list_sessions", {}),  # read-only ones too: the worker cannot serve DSPy at all
        ("get_program", {"program_id": "p"}),
        ("get_usage", {"session_id": "nope"}),
    ]:
        error = assert_error(worker.request(command, args), "engine_unavailable")
        assert error["retryable"] is True
    assert worker.call("get_stats")["engine"] == "failed"


# ----- nothing an observer raises costs a reply; frames are bounded in items and keys -----


def test_a_request_the_recorder_cannot_render_costs_no_reply(spawn: Any, tmp_path: Path) -> None:
    record = tmp_path / "session.jsonl"
    worker = spawn("--enable-test-commands", "--record", str(record))
    stamp = msgpack.Timestamp(1_700_000_000, 5)
    odd_values = [stamp, msgpack.ExtType(5, b"x"), {1: "int key"}, b"\xff", [stamp]]
    ids = [worker.new_id() for _ in odd_values]
    # One write, so all of them arrive in one read, with a ping behind them.
    worker.send_raw(
        b"".join(
            encode_frame(msgpack.packb({"id": i, "command": "echo", "args": {"value": v}}))
            for i, v in zip(ids, odd_values, strict=True)
        )
        + encode_frame(msgpack.packb({"id": "after", "command": "ping"}))
    )
    for request_id in ids:
        assert worker.response(request_id)["success"] is True
    assert worker.response("after")["success"] is True
    assert worker.call("get_stats")["observer_failures"] == 0
    text = record.read_text()
    assert '"$ext": {"type": -1' in text


def test_a_frame_of_millions_of_empty_maps_is_refused_by_its_item_count(spawn: Any) -> None:
    worker = spawn("--enable-test-commands")
    slow = worker.start("sleep", {"ms": 200})
    worker.send_frame(b"\xdd" + struct.pack(">I", 4_000_000) + b"\x80" * 4_000_000)
    error = assert_error(worker.response(None), "invalid_frame")
    assert error["details"] == {"limit": "max_frame_items", "max_frame_items": 1_000_000}
    assert worker.response(slow)["success"] is True
    assert_serving(worker)


@pytest.mark.parametrize("where", ["envelope", "args"])
def test_hundreds_of_thousands_of_unknown_keys_get_a_small_answer(spawn: Any, where: str) -> None:
    worker = spawn()
    keys = {f"k{i}": 0 for i in range(400_000)}
    message: dict[str, Any] = {"id": "big", "command": "ping"}
    if where == "envelope":
        message.update(keys)
    else:
        message["args"] = keys
    worker.send(message)
    reply = worker.response("big")
    error = assert_error(reply, "invalid_request" if where == "envelope" else "invalid_args")
    assert len(error["details"]["errors"]) == 20
    assert error["details"]["omitted"] >= 399_980
    assert len(msgpack.packb(reply)) < 10_000
    assert len(error["message"]) < 2_000
    assert max(len(line) for line in worker.stderr_text().splitlines()) < 10_000
    assert_serving(worker)


def test_a_host_that_reads_replies_slowly_stops_the_worker_reading(tmp_path: Path) -> None:
    """Replies the host has not read are bounded by --max-outbox-bytes: past it the worker
    reads no more requests (the host's writes block) until the host reads."""
    limit = 1024 * 1024
    process = subprocess.Popen(
        [sys.executable, "-m", "dspy_bridge", "--enable-test-commands", "--max-outbox-bytes",
         str(limit)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=REPO,
    )
    assert process.stdin is not None and process.stdout is not None
    count, size = 80, 100_000  # 8 MB of replies
    frames = [
        encode_frame(msgpack.packb({"id": i, "command": "echo", "args": {"value": "x" * size}}))
        for i in range(count)
    ]
    stdin = process.stdin

    def send_all() -> None:
        for frame in frames:
            stdin.write(frame)
        stdin.write(encode_frame(msgpack.packb({"id": "stats", "command": "get_stats"})))
        stdin.flush()

    sender = threading.Thread(target=send_all, daemon=True)
    try:
        sender.start()
        sender.join(timeout=3)
        assert sender.is_alive(), "the worker read 8 MB of requests while nobody read a reply"
        decoder = FrameDecoder(2**32 - 1)
        replies: dict[Any, Any] = {}
        while len(replies) < count + 1:  # `get_stats` may answer before the last echoes
            data = os.read(process.stdout.fileno(), 1 << 16)
            assert data, "the worker closed its output"
            for frame in decoder.feed(data):
                message = msgpack.unpackb(frame.payload)  # type: ignore[union-attr]
                if "id" in message:
                    replies[message["id"]] = message
        assert all(replies[i]["success"] for i in range(count))
        outbox = replies["stats"]["result"]["outbox"]
        assert outbox["read_pauses"] >= 1
        # Over the limit by at most the replies of the requests of the last reads (256 KiB each).
        assert outbox["peak_bytes"] <= limit + 3 * 256 * 1024
    finally:
        process.kill()
        process.wait()


# ----- logging never blocks; the exit comes within a second whatever threads do -----


def test_a_host_that_never_drains_stderr_cannot_freeze_the_worker() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "dspy_bridge", "--enable-test-commands", "--max-in-flight", "5000",
         "--max-log-queue", "100"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
    )
    try:
        client = RawClient(process)
        client.read()  # ready
        # Each request logs a line: 3,000 of them are far more than a pipe holds (64 KiB).
        pad = "x" * 200
        for index in range(3000):
            client.send({"id": index, "command": "echo", "args": {"value": pad}})
        replies = [client.read() for _ in range(3000)]
        assert [r for r in replies if not r.get("success")] == []
        client.send({"id": "stats", "command": "get_stats"})
        stats = client.read()["result"]
        assert stats["logs"]["dropped"] > 0
        process.stdin.close()  # type: ignore[union-attr]
        assert process.wait(timeout=5) == 0
    finally:
        process.kill()
        process.wait()


def test_eof_exits_within_a_second_while_threads_are_blocked(worker: Any) -> None:
    # More blocked threads than the default executor has (min(32, cores + 4)).
    for _ in range(40):
        worker.start("sleep", {"ms": 60_000, "in_thread": True})
    worker.call("ping")
    worker.process.stdin.close()
    assert worker.wait_exit(timeout=2.0) == 0


def test_record_to_an_unwritable_path_exits_2_before_ready(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dspy_bridge", "--record", str(tmp_path / "missing" / "x.jsonl")],
        cwd=REPO, capture_output=True, timeout=30, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2
    assert result.stdout == b""  # no ready frame
    assert b"cannot record" in result.stderr


class RawClient:
    """Frames over a subprocess's pipes, read in the test's own thread."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdin is not None and process.stdout is not None
        self._stdin, self._stdout = process.stdin, process.stdout
        self._decoder = FrameDecoder(2**32 - 1)
        self._frames: list[Any] = []

    def send(self, message: Any) -> None:
        self._stdin.write(encode_frame(msgpack.packb(message)))
        self._stdin.flush()

    def read(self) -> Any:
        while not self._frames:
            data = os.read(self._stdout.fileno(), 1 << 16)
            assert data, "the worker closed its output"
            self._frames.extend(
                msgpack.unpackb(frame.payload)  # type: ignore[union-attr]
                for frame in self._decoder.feed(data)
            )
        return self._frames.pop(0)


# ----- names that cannot work are refused at creation; hostile answers are lm_error -----


@pytest.fixture(scope="module")
def mock_worker() -> Any:
    from tests.conftest import WorkerProcess

    process = WorkerProcess("--enable-test-commands")
    process.call("configure_lm", {"model": "mock"})
    yield process
    process.close()


@pytest.mark.parametrize("name", ["self", "instance", "base"])
@pytest.mark.parametrize("program_type", ["predict", "chain_of_thought"])
@pytest.mark.parametrize("side", ["input", "output"])
def test_field_names_dspy_cannot_pass_are_refused_at_creation(
    mock_worker: Any, name: str, program_type: str, side: str
) -> None:
    signature = f"{name} -> answer" if side == "input" else f"question -> {name}"
    error = assert_error(
        mock_worker.request(
            "create_program", {"signature": signature, "program_type": program_type}
        ),
        "invalid_args",
    )
    assert name in error["message"]


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    name=st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,12}", fullmatch=True)
    | st.sampled_from(["self", "instance", "base", "kwargs", "args", "cls", "signature",
                       "demos", "config", "lm", "callbacks", "inputs", "fields", "reasoning"]),
    program_type=st.sampled_from(["predict", "chain_of_thought"]),
)
def test_an_accepted_field_name_always_executes(
    mock_worker: Any, name: str, program_type: str
) -> None:
    """The class: whatever name create_program accepts, execute_program runs."""
    created = mock_worker.request(
        "create_program",
        {"signature": f"{name} -> answer", "program_type": program_type,
         "demos": [{name: "d", "answer": "a"}]},
    )
    if not created["success"]:
        assert created["error"]["type"] == "invalid_args", created
        return
    program_id = created["result"]["program_id"]
    executed = mock_worker.request(
        "execute_program", {"program_id": program_id, "inputs": {name: "hello"}}
    )
    assert executed["success"], executed
    mock_worker.call("delete_program", {"program_id": program_id})


def deep_json(levels: int) -> str:
    return "[" * levels + "1" + "]" * levels


@pytest.mark.parametrize(
    ("output_type", "raw"),
    [
        ("dict", '{"a": ' + deep_json(600) + "}"),
        ("dict", '{"a": ' + deep_json(140) + "}"),
        ("dict", '{"a": "\\ud800"}'),
        ("list[str]", '["ok", "\\udfff"]'),
        ("dict", '{"\\ud800": 1}'),
    ],
)
def test_a_hostile_answer_is_lm_error_never_a_broken_reply(
    mock_worker: Any, output_type: str, raw: str
) -> None:
    text = f"[[ ## answer ## ]]\n{raw}\n\n[[ ## completed ## ]]\n"
    program = mock_worker.call(
        "create_program",
        {"signature": f"question -> answer: {output_type}",
         "lm": {"model": "mock/hostile", "extra": {"default": {"__raw__": text}}}},
    )["program_id"]
    response = mock_worker.request(
        "execute_program", {"program_id": program, "inputs": {"question": "q"}}
    )
    error = assert_error(response, "lm_error")
    assert error["details"]["reason"] in {"invalid_output", "unparseable_answer"}, error
    assert_serving(mock_worker)


def test_an_answer_just_within_the_depth_limit_comes_back(mock_worker: Any) -> None:
    text = '[[ ## answer ## ]]\n{"a": ' + deep_json(90) + "}\n\n[[ ## completed ## ]]\n"
    program = mock_worker.call(
        "create_program",
        {"signature": "question -> answer: dict",
         "lm": {"model": "mock/deep", "extra": {"default": {"__raw__": text}}}},
    )["program_id"]
    result = mock_worker.call(
        "execute_program", {"program_id": program, "inputs": {"question": "q"}}
    )
    value = result["outputs"]["answer"]["a"]
    depth = 0
    while isinstance(value, list):
        value, depth = value[0], depth + 1
    assert (depth, value) == (90, 1)


def test_a_reply_larger_than_the_frame_limit_is_refused_not_sent(spawn: Any) -> None:
    """Replies that gather stored state (list_programs) can outgrow any one request."""
    worker = spawn("--max-reply-bytes", "100000")
    for index in range(5):
        worker.call(
            "create_program",
            {"program_id": f"p{index}", "signature": "q -> a", "instructions": "i" * 40_000},
        )
    error = assert_error(worker.request("list_programs"), "limit_exceeded")
    assert error["details"]["limit"] == "max_reply_bytes"
    assert error["retryable"] is False
    assert_serving(worker)


@pytest.mark.parametrize(
    ("signature", "inputs"),
    [
        ("x: float -> y", {"x": float("nan")}),
        ("x: float -> y", {"x": float("inf")}),
        ("x: list[float] -> y", {"x": [1.0, float("-inf")]}),
        ("x: dict -> y", {"x": {"deep": [{"v": float("nan")}]}}),
    ],
)
def test_nan_and_infinity_are_refused_as_inputs(
    mock_worker: Any, signature: str, inputs: dict[str, Any]
) -> None:
    program = mock_worker.call("create_program", {"signature": signature})["program_id"]
    error = assert_error(
        mock_worker.request("execute_program", {"program_id": program, "inputs": inputs}),
        "invalid_args",
    )
    assert error["details"]["errors"][0]["field"] == "inputs.x"
    demo = {"x": inputs["x"], "y": "a"}
    assert_error(
        mock_worker.request("create_program", {"signature": signature, "demos": [demo]}),
        "invalid_args",
    )


def test_cancel_of_its_own_id_is_refused(mock_worker: Any) -> None:
    for own in ["self-cancel", 987654]:
        response = mock_worker.request("cancel", {"request_id": own}, id=own)
        error = assert_error(response, "invalid_args")
        assert error["details"]["errors"][0]["field"] == "request_id"
    # A cancel naming the same value under another type is another id.
    assert mock_worker.call("cancel", {"request_id": "987655"}, id=987655) == {"cancelled": False}


# ----- redaction cannot be turned against other tenants, and never leaks a fragment -----

PROTOCOL_WORDS = ["invalid", "req-", "prog_", "default", "not_found", "session", "ready",
                  "result", "success", "error", "true"]


def test_a_tenants_key_never_rewrites_another_tenants_frames(spawn: Any) -> None:
    worker = spawn("--session-idle-ttl-s", "0.2")
    for index, word in enumerate(PROTOCOL_WORDS):  # tenant A's "keys" are protocol words
        worker.call("configure_lm", {"session_id": f"attacker{index}", "model": "mock",
                                     "api_key": word})
    reply = worker.request("create_program", {"session_id": "victim", "program_id": "prog_9",
                                              "signature": "q -> a"}, id="req-1")
    assert reply["id"] == "req-1"
    assert reply["result"]["program_id"] == "prog_9"
    assert reply["result"]["session_id"] == "victim"
    error = worker.request("get_program", {"session_id": "victim", "program_id": "nope"},
                           id="req-2")["error"]
    assert error["type"] == "not_found"
    assert error["details"] == {"session_id": "victim", "program_id": "nope"}
    invalid = worker.request("execute_program", {"session_id": "victim",
                                                 "program_id": "prog_9"}, id="req-3")
    assert invalid["error"]["type"] == "invalid_args"
    assert invalid["error"]["details"]["errors"][0] == {
        "field": "inputs.q", "message": "missing input field"}
    evicted = worker.next_event("session_evicted")
    assert evicted["event"] == "session_evicted" and evicted["reason"] == "idle"
    assert "<redacted>" not in repr(worker.call("list_sessions"))


def test_secrets_are_held_only_while_an_lm_uses_them(spawn: Any) -> None:
    worker = spawn()
    for index in range(300):  # rejected: the temperature is out of range
        assert_error(worker.request("configure_lm", {"model": "mock", "temperature": 9,
                                                     "api_key": f"sk-rejected-{index:06d}"}),
                     "invalid_args")
        assert_error(worker.request("create_program", {
            "signature": "q -> a", "program_type": "nope",
            "lm": {"model": "mock", "api_key": f"sk-rejected-p{index:06d}"}}), "invalid_args")
    assert worker.call("get_stats")["secrets_held"] == 0
    worker.call("configure_lm", {"session_id": "a", "model": "mock", "api_key": "sk-a-111111"})
    worker.call("create_program", {"session_id": "a", "signature": "q -> x", "program_id": "p",
                                   "lm": {"model": "mock", "api_key": "sk-p-222222"}})
    assert worker.call("get_stats")["secrets_held"] == 2
    worker.call("configure_lm", {"session_id": "a", "model": "mock"})  # the key replaced
    assert worker.call("get_stats")["secrets_held"] == 1
    worker.call("end_session", {"session_id": "a"})
    assert worker.call("get_stats")["secrets_held"] == 0


KEY = "sk-fragment-test-0123456789abcdef"


def fragments(secret: str, size: int = 8) -> list[str]:
    return [secret[i : i + size] for i in range(len(secret) - size + 1)]


@pytest.mark.parametrize("offset", [985, 990, 995, 999])
def test_a_key_cut_by_truncation_leaves_no_fragment(spawn: Any, offset: int) -> None:
    worker = spawn()
    message = "m" * offset + KEY + " tail"
    raw = "r" * (offset // 2) + KEY
    worker.call("configure_lm", {"session_id": "t", "model": "mock", "api_key": KEY,
                                 "num_retries": 0, "extra": {"fail": {"error": "auth",
                                                                      "message": message}}})
    worker.call("create_program", {"session_id": "t", "program_id": "p", "signature": "q -> a"})
    worker.call("create_program", {
        "session_id": "t", "program_id": "raw", "signature": "q -> a: int",
        "lm": {"model": "mock/raw", "api_key": KEY, "extra": {"default": {"__raw__": raw}}}})
    failed = worker.request("execute_program", {"session_id": "t", "program_id": "p",
                                                "inputs": {"q": "x"}})
    unparsed = worker.request("execute_program", {"session_id": "t", "program_id": "raw",
                                                  "inputs": {"q": "x"}})
    assert_error(failed, "lm_error")
    assert assert_error(unparsed, "lm_error")["details"]["reason"] == "unparseable_answer"
    worker.close()
    text = repr([failed, unparsed]) + worker.stderr_text()
    leaked = [piece for piece in fragments(KEY) if piece in text]
    assert leaked == []


def test_a_bearer_token_in_headers_is_scrubbed_from_provider_errors(spawn: Any) -> None:
    from tests.fake_openai_server import fake_openai

    token = "tok-bearer-5f2e9a7c1d3b"
    with fake_openai() as server:
        server.fail_next(1, 401, f"invalid credentials: {token}")
        worker = spawn()
        worker.call("configure_lm", {
            "model": "openai/test-model", "api_base": server.base_url, "api_key": "sk-unused-1",
            "num_retries": 0, "extra": {"headers": {"Authorization": f"Bearer {token}"}}})
        worker.call("create_program", {"program_id": "p", "signature": "q -> a"})
        response = worker.request("execute_program", {"program_id": "p", "inputs": {"q": "x"}},
                                  timeout=60)
        error = assert_error(response, "lm_error")
        worker.close()
    assert token not in repr(response) + worker.stderr_text()
    assert "<redacted>" in error["message"]


def test_api_key_env_names_only_what_the_operator_allows(spawn: Any) -> None:
    secret_env = {"AWS_SECRET_ACCESS_KEY": "aws-secret-value-1", "ACME_API_KEY": "sk-acme-1234",
                  "OTHER_TOKEN": "tok-other-5678"}
    worker = spawn(env=secret_env)
    error = assert_error(worker.request("configure_lm", {
        "model": "openai/x", "api_key_env": "AWS_SECRET_ACCESS_KEY"}), "invalid_args")
    assert error["details"]["errors"][0]["field"] == "api_key_env"
    assert worker.call("configure_lm", {"model": "openai/x", "api_key_env": "ACME_API_KEY"})
    narrowed = spawn("--api-key-env-allow", "OTHER_*", env=secret_env)
    assert_error(narrowed.request("configure_lm", {"model": "openai/x",
                                                   "api_key_env": "ACME_API_KEY"}),
                 "invalid_args")
    assert narrowed.call("configure_lm", {"model": "openai/x", "api_key_env": "OTHER_TOKEN"})


# ----- stored state and the cache are bounded in bytes; the operator bounds the cache -----


def test_a_session_stores_at_most_its_byte_budget(spawn: Any) -> None:
    worker = spawn("--max-session-bytes", "180000", "--max-stored-bytes", "300000")
    demo = {"q": "x" * 50_000, "a": "y"}
    for index in range(3):
        worker.call("create_program", {"session_id": "big", "program_id": f"p{index}",
                                       "signature": "q -> a", "demos": [demo]})
    kinds = {  # demos, instructions and mock answers all count
        "demos": {"signature": "q -> a", "demos": [demo]},
        "instructions": {"signature": "q -> a", "instructions": "i" * 49_000},
        "lm": {"signature": "q -> a", "lm": {"model": "mock", "default": "z" * 60_000}},
    }
    for args in kinds.values():
        error = assert_error(worker.request("create_program", {"session_id": "big", **args}),
                             "limit_exceeded")
        assert error["details"]["limit"] == "max_session_bytes"
        assert error["retryable"] is False
    error = assert_error(worker.request("configure_lm", {
        "session_id": "big", "model": "mock", "default": "z" * 60_000}), "limit_exceeded")
    assert error["details"]["limit"] == "max_session_bytes"
    # Another session fits its own budget but not the worker's.
    worker.call("create_program", {"session_id": "other", "signature": "q -> a",
                                   "demos": [demo]})
    error = assert_error(worker.request("create_program", {
        "session_id": "third", "signature": "q -> a", "demos": [demo] * 3}), "limit_exceeded")
    assert error["details"]["limit"] == "max_stored_bytes"
    # Deleting gives the bytes back.
    worker.call("delete_program", {"session_id": "big", "program_id": "p0"})
    worker.call("create_program", {"session_id": "big", "signature": "q -> a", "demos": [demo]})
    sizes = {s["session_id"]: s["stored_bytes"] for s in worker.call("list_sessions")["sessions"]}
    assert 150_000 < sizes["big"] <= 180_000
    worker.call("end_session", {"session_id": "big"})
    assert worker.call("get_stats")["stored_bytes"] == sizes["other"]


def test_the_operator_bounds_the_cache(spawn: Any, tmp_path: Path) -> None:
    no_disk = spawn()
    error = assert_error(no_disk.request("configure_cache", {"enable_disk": True}), "invalid_args")
    assert error["details"]["errors"][0]["field"] == "enable_disk"
    for name, flag in [("memory_max_entries", "max_cache_entries"),
                       ("memory_max_bytes", "max_cache_bytes"),
                       ("disk_size_limit_bytes", "max_disk_cache_bytes")]:
        error = assert_error(no_disk.request("configure_cache", {name: 100_000_000_000}),
                             "limit_exceeded")
        assert error["details"]["limit"] == flag and error["retryable"] is False
    root = tmp_path / "caches"
    root.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (root / "link").symlink_to(tmp_path / "elsewhere")
    worker = spawn("--disk-cache-root", str(root))
    for outside in [str(tmp_path / "elsewhere"), str(root / ".." / "elsewhere"),
                    str(root / "link"), "/"]:
        error = assert_error(worker.request("configure_cache", {
            "enable_disk": True, "disk_dir": outside}), "invalid_args")
        assert error["details"]["errors"][0]["field"] == "disk_dir"
    settings = worker.call("configure_cache", {"enable_disk": True})
    assert settings["disk_dir"] == str(root.resolve())
    inside = worker.call("configure_cache", {"enable_disk": True, "disk_dir": str(root / "a")})
    assert inside["disk_dir"] == str((root / "a").resolve())


def test_cached_answers_are_bounded_in_bytes(spawn: Any) -> None:
    worker = spawn("--max-cache-bytes", "300000")
    worker.call("configure_lm", {"model": "mock", "default": "w " * 50_000})  # ~100 KB each
    worker.call("create_program", {"program_id": "p", "signature": "q -> a"})
    for index in range(20):
        worker.call("execute_program", {"program_id": "p", "inputs": {"q": f"q{index}"}})
    again = worker.call("execute_program", {"program_id": "p", "inputs": {"q": "q19"}})
    assert again["usage"]["cached_requests"] == 1  # the latest is cached...
    first = worker.call("execute_program", {"program_id": "p", "inputs": {"q": "q0"}})
    assert first["usage"]["cached_requests"] == 0  # ...the oldest was pushed out by bytes
    assert worker.call("configure_cache", {})["memory_max_bytes"] == 300_000


def test_latency_percentiles_never_exceed_the_maximum(spawn: Any) -> None:
    worker = spawn("--enable-test-commands")
    ids = [worker.start("sleep", {"ms": ms}) for ms in [1, 2, 3, 5, 8, 13, 21, 34] * 3]
    for request_id in ids:
        assert worker.response(request_id)["success"]
    for command, figures in worker.call("get_stats")["latency_ms"].items():
        assert figures["p50_ms"] <= figures["p95_ms"] <= figures["p99_ms"] <= figures["max_ms"], (
            command, figures)


def test_the_requests_in_flight_are_bounded_in_bytes(spawn: Any) -> None:
    """Past --max-in-flight-bytes new work is refused (retryable), control commands still
    pass, and room comes back as requests answer."""
    worker = spawn("--max-in-flight-bytes", "20000", "--enable-test-commands")
    assert worker.ready["limits"]["max_in_flight_bytes"] == 20000
    worker.call("configure_lm", {"session_id": "b", "model": "mock", "latency_ms": 60_000,
                                 "default": "x", "cache": False})
    worker.call("create_program", {"session_id": "b", "program_id": "p",
                                   "signature": "question -> answer"})
    big = {"session_id": "b", "program_id": "p", "inputs": {"question": "q" * 12_000}}
    first = worker.start("execute_program", big)
    worker.call("ping")  # the first is admitted and running
    refused = worker.request("execute_program", big)
    assert refused["error"]["type"] == "limit_exceeded" and refused["error"]["retryable"]
    assert refused["error"]["details"]["limit"] == "max_in_flight_bytes"
    small = worker.start("echo", {"value": "small enough"})
    assert worker.response(small)["result"] == "small enough"
    assert worker.call("get_stats")["in_flight"] == 1
    assert worker.call("cancel", {"request_id": first}) == {"cancelled": True}
    assert worker.response(first)["error"]["type"] == "cancelled"
    again = worker.start("execute_program", {**big, "inputs": {"question": "r" * 12_000}})
    worker.call("ping")
    assert worker.call("cancel", {"request_id": again}) == {"cancelled": True}  # admitted
