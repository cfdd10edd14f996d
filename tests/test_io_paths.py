"""The two ways frames and log lines leave and enter the worker: at once on the loop where
the descriptor allows it, through a thread where it does not. Each way must keep every
frame and line, whole and in order."""

from __future__ import annotations

import json
import os
import select
import socket
import struct
import subprocess
import sys
from typing import Any

import msgpack

from dspy_bridge.io.logs import LogQueue
from tests.conftest import REPO


def frames_of(data: bytes) -> list[Any]:
    messages, start = [], 0
    while start < len(data):
        (size,) = struct.unpack_from(">I", data, start)
        messages.append(msgpack.unpackb(data[start + 4 : start + 4 + size]))
        start += 4 + size
    return messages


def frame(message: Any) -> bytes:
    payload = msgpack.packb(message)
    return struct.pack(">I", len(payload)) + payload


REQUESTS = (
    frame({"id": 1, "command": "ping"})
    + frame([1, 2])  # not a map: invalid_frame, answered under nil
    + frame({"id": 2, "command": "nope"})
    + frame({"id": 3, "command": "ping"})
)


def assert_answers(messages: list[Any]) -> None:
    # Replies come as their requests finish: a refusal before a ping that was admitted.
    replies = {m["id"]: m for m in messages if "event" not in m}
    assert len(replies) == 4 and {1, None, 2, 3} == set(replies)
    assert replies[1]["success"] and replies[3]["success"]
    assert replies[None]["error"]["type"] == "invalid_frame"
    assert replies[2]["error"]["type"] == "unknown_command"
    assert messages[0]["event"] == "ready"


def test_requests_read_from_a_regular_file_are_all_answered(tmp_path: Any) -> None:
    """A regular file cannot be polled: a thread reads it, and nothing is lost."""
    requests = tmp_path / "requests.bin"
    requests.write_bytes(REQUESTS)
    with open(requests, "rb") as stdin:
        result = subprocess.run([sys.executable, "-m", "dspy_bridge"], cwd=REPO, stdin=stdin,
                                capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert_answers(frames_of(result.stdout))


def test_requests_over_a_socket_are_all_answered() -> None:
    """A socket is polled by the loop, as a pipe is; a frame split across writes too."""
    ours, theirs = socket.socketpair()
    process = subprocess.Popen([sys.executable, "-m", "dspy_bridge"], cwd=REPO, stdin=theirs,
                               stdout=theirs, stderr=subprocess.DEVNULL)
    theirs.close()
    try:
        for start in range(0, len(REQUESTS), 7):
            ours.sendall(REQUESTS[start : start + 7])
        ours.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := ours.recv(1 << 16):
            received += chunk
        assert process.wait(timeout=60) == 0
    finally:
        ours.close()
        if process.poll() is None:
            process.kill()
    assert_answers(frames_of(received))


NEWLINE = b"\n"


def read_all(fd: int, until: int) -> bytes:
    """Read a pipe until `until` lines have come."""
    data = b""
    while data.count(NEWLINE) < until:
        ready, _, _ = select.select([fd], [], [], 30)
        assert ready, f"only {data.count(NEWLINE)} of {until} lines came"
        data += os.read(fd, 1 << 16)
    return data


def test_log_lines_into_a_pipe_nobody_reads_are_kept_in_order_then_dropped() -> None:
    """While the pipe takes lines they go at once; once it is full they queue; past the
    queue's bound they are dropped and counted. What is read later is whole and in order,
    long lines (over PIPE_BUF, which the pipe would split) included."""
    read_end, write_end = os.pipe()
    capacity = 200
    sink = LogQueue(max_queued=capacity, fd=write_end)
    lines = [json.dumps({"n": n, "pad": "x" * (6000 if n % 97 == 0 else 300)}) + "\n"
             for n in range(2000)]
    for line in lines:
        sink.write(line)
    assert os.get_blocking(write_end), "fd's own description must stay blocking"
    assert sink.dropped > 0
    kept = len(lines) - sink.dropped
    data = read_all(read_end, kept)
    sink.drain(timeout=30)
    got = [json.loads(text)["n"] for text in data.decode().splitlines()]
    assert len(got) == kept and got == sorted(got)
    assert got[: 10] == list(range(10))  # the first went at once, before the pipe filled
    assert any(n % 97 == 0 for n in got)
    os.close(read_end)
    os.close(write_end)


def test_log_lines_into_a_file_append_after_what_others_wrote(tmp_path: Any) -> None:
    """A file's lines are written at once on the descriptor itself: opened for appending
    by someone else, it is appended to, never overwritten."""
    path = tmp_path / "stderr.log"
    with open(path, "a") as other:
        other.write("first\n")
        other.flush()
        sink = LogQueue(fd=other.fileno())
        sink.write("second\n")
        other.write("third\n")
        other.flush()
        sink.write("fourth\n")
        sink.drain(timeout=30)
    assert path.read_text().splitlines() == ["first", "second", "third", "fourth"]


def test_log_lines_into_a_terminal_like_descriptor_go_through_the_thread() -> None:
    """Neither a pipe nor a file (here a socket): every line is queued for the thread,
    and all of them arrive."""
    ours, theirs = socket.socketpair()
    sink = LogQueue(fd=theirs.fileno())
    for n in range(50):
        sink.write(f"{n}\n")
    sink.drain(timeout=30)
    theirs.close()
    data = b""
    while chunk := ours.recv(1 << 16):
        data += chunk
    ours.close()
    assert data.decode().splitlines() == [str(n) for n in range(50)]
