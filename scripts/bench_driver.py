"""The bench's one driver for every process it measures (the worker and its baselines
alike): raw {packet, 4} msgpack frames over non-blocking pipes, many processes at once
from one selector loop, so no client thread or queue sits between a frame and its clock.
"""

from __future__ import annotations

import itertools
import os
import selectors
import struct
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

READ_CHUNK = 1 << 20
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot, from /proc/stat's `cpu` line."""
    with open("/proc/stat") as stat:
        ticks = [int(n) for n in stat.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks[:8]) - idle) / CLOCK_TICKS


def own_cpu_seconds() -> float:
    """CPU seconds of this (the driving) process."""
    times = os.times()
    return times.user + times.system


class PeerFailed(Exception):
    """A measured process exited, answered an error, or did not answer in time."""


class Peer:
    """One spawned process speaking the worker's framing on its stdin/stdout."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.name = name
        # Its log lines go to a file: written as a host that drains stderr would let them
        # be, and kept for the message when it fails.
        self._stderr = tempfile.TemporaryFile()
        self.spawned_at = time.perf_counter()
        self.process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, env=env
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self.stdin_fd, self.stdout_fd = self.process.stdin.fileno(), self.process.stdout.fileno()
        os.set_blocking(self.stdin_fd, False)
        os.set_blocking(self.stdout_fd, False)
        self._out = bytearray()
        self._in = bytearray()
        self._ids = itertools.count(1)
        # (arrival time, event map) of every event received, in order.
        self.events: list[tuple[float, dict[str, Any]]] = []

    @property
    def pid(self) -> int:
        return self.process.pid

    def queue(self, command: str, args: dict[str, Any]) -> int:
        request_id = next(self._ids)
        payload = msgpack.packb({"id": request_id, "command": command, "args": args})
        self._out += struct.pack(">I", len(payload)) + payload
        return request_id

    def flush(self) -> None:
        """Write what the pipe takes now; the rest waits for the selector."""
        while self._out:
            try:
                written = os.write(self.stdin_fd, self._out)
            except BlockingIOError:
                return
            except BrokenPipeError:
                raise PeerFailed(f"{self.name} stopped reading: {self.stderr_tail()}") from None
            del self._out[:written]

    @property
    def wants_write(self) -> bool:
        return bool(self._out)

    def read(self) -> list[dict[str, Any]]:
        """Every whole message the pipe holds now."""
        try:
            chunk = os.read(self.stdout_fd, READ_CHUNK)
        except BlockingIOError:
            return []
        if not chunk:
            self.process.wait()
            raise PeerFailed(
                f"{self.name} exited ({self.process.returncode}): {self.stderr_tail()}"
            )
        self._in += chunk
        messages, start = [], 0
        while len(self._in) - start >= 4:
            size = struct.unpack_from(">I", self._in, start)[0]
            if len(self._in) - start < 4 + size:
                break
            messages.append(msgpack.unpackb(memoryview(self._in)[start + 4 : start + 4 + size]))
            start += 4 + size
        del self._in[:start]
        return messages

    def call(self, command: str, args: dict[str, Any] | None = None, timeout: float = 60) -> Any:
        load = Load(self, [(command, args or {})], keep_results=True)
        drive([load], timeout)
        return load.results[0]

    def wait_event(self, name: str, timeout: float = 60) -> float:
        """The arrival time of the first `name` event, waiting for it if need be."""
        deadline = time.perf_counter() + timeout
        selector = selectors.DefaultSelector()
        selector.register(self.stdout_fd, selectors.EVENT_READ)
        try:
            while True:
                for arrived, event in self.events:
                    if event.get("event") == name:
                        return arrived
                if time.perf_counter() > deadline:
                    raise PeerFailed(f"no {name!r} event from {self.name} in {timeout} s")
                if selector.select(timeout=0.1):
                    now = time.perf_counter()
                    self.events.extend((now, m) for m in self.read() if "event" in m)
        finally:
            selector.close()

    def cpu_seconds(self) -> float:
        """utime + stime of the process so far, from /proc/<pid>/stat."""
        with open(f"/proc/{self.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise PeerFailed(f"no VmRSS for {self.name}")

    def stderr_tail(self, size: int = 2000) -> str:
        self._stderr.seek(0, os.SEEK_END)
        self._stderr.seek(max(0, self._stderr.tell() - size))
        return self._stderr.read().decode("utf-8", "replace")

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._stderr.close()


@dataclass
class Load:
    """Requests for one peer, at most `window` of them in flight; filled in by `drive`."""

    peer: Peer
    requests: Sequence[tuple[str, dict[str, Any]]]
    window: int = 1
    keep_results: bool = False
    latencies: list[float] = field(default_factory=list)
    results: list[Any] = field(default_factory=list)
    started: float = 0.0
    finished: float = 0.0
    _next: int = 0
    _sent: dict[int, float] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return len(self.latencies) == len(self.requests)

    @property
    def seconds(self) -> float:
        return self.finished - self.started

    def top_up(self) -> None:
        while self._next < len(self.requests) and len(self._sent) < self.window:
            command, args = self.requests[self._next]
            self._next += 1
            now = time.perf_counter()
            self._sent[self.peer.queue(command, args)] = now
            if not self.started:
                self.started = now
        self.peer.flush()

    def receive(self, messages: list[dict[str, Any]], now: float) -> None:
        for message in messages:
            if "event" in message:
                self.peer.events.append((now, message))
                continue
            sent = self._sent.pop(message["id"])
            if not message["success"]:
                raise PeerFailed(f"{self.peer.name} answered an error: {message['error']}")
            self.latencies.append(now - sent)
            if self.keep_results:
                self.results.append(message["result"])
        if self.done:
            self.finished = now


def drive(loads: Sequence[Load], timeout: float = 300) -> None:
    """Run every load to its end, all at once (one load per peer)."""
    deadline = time.perf_counter() + timeout
    by_fd = {load.peer.stdout_fd: load for load in loads}
    by_fd.update({load.peer.stdin_fd: load for load in loads})
    selector = selectors.DefaultSelector()
    for load in loads:
        selector.register(load.peer.stdout_fd, selectors.EVENT_READ)
        load.top_up()
    writing: set[int] = set()
    try:
        while not all(load.done for load in loads):
            for load in loads:
                fd = load.peer.stdin_fd
                if load.peer.wants_write and fd not in writing:
                    selector.register(fd, selectors.EVENT_WRITE)
                    writing.add(fd)
                elif not load.peer.wants_write and fd in writing:
                    selector.unregister(fd)
                    writing.discard(fd)
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise PeerFailed("timed out: " + ", ".join(
                    f"{load.peer.name} {len(load.latencies)}/{len(load.requests)}"
                    for load in loads))
            for key, _ in selector.select(timeout=min(remaining, 1.0)):
                load = by_fd[key.fd]
                if key.fd == load.peer.stdout_fd:
                    messages = load.peer.read()
                    load.receive(messages, time.perf_counter())
                load.top_up()
    finally:
        selector.close()
