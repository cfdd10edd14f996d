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

from protocol.framing import FrameDecoder, encode_frame
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
        [sys.executable, "-m", "bridge", "--enable-test-commands", "--max-outbox-bytes",
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
        while "stats" not in replies:
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
        [sys.executable, "-m", "bridge", "--enable-test-commands", "--max-in-flight", "5000",
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
        [sys.executable, "-m", "bridge", "--record", str(tmp_path / "missing" / "x.jsonl")],
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
