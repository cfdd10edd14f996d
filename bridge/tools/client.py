"""A Python host for the worker: spawn it, send frames, receive decoded messages.

Used by `dspy-bridge replay`, the benchmarks and the tests, and usable by any Python
program that wants to drive a worker the way the Elixir client does. Python callables
registered as host functions (`register_function`) answer the worker's callbacks by
themselves (see `bridge.tools.callbacks`).
"""

from __future__ import annotations

import itertools
import os
import queue
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dspy_bridge.protocol.framing import MAX_LENGTH, encode_frame
from dspy_bridge.protocol.host import HostConnection, HostItem, InvalidFrame
from dspy_bridge.tools.callbacks import Callback, CallbackServer, HostCallable, HostFunction

DEFAULT_TIMEOUT_S = 10.0
READER_JOIN_S = 2.0
STDERR_TAIL_LINES = 30
READ_CHUNK = 256 * 1024


def default_worker_command() -> list[str]:
    # -P: the working directory is not on sys.path, so no stray module there shadows ours
    return [sys.executable, "-P", "-m", "dspy_bridge"]


class WorkerExited(Exception):
    """The worker closed its output: it exited (or is exiting)."""

    def __init__(self, returncode: int | None) -> None:
        super().__init__(f"the worker exited (exit code {returncode})")
        self.returncode = returncode


@dataclass(frozen=True, slots=True)
class _Eof:
    pass


class RequestFailed(Exception):
    """A request answered with `success: false`; `error` is the wire error map."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(f"{error.get('type')}: {error.get('message')}")
        self.error = error


class WorkerClient:
    """A worker subprocess over pipes: frames out, decoded messages in (a reader thread).

    The protocol is kept by a `HostConnection`: `call` and `call_many` send checked
    requests, while `send`, `send_payload` and `send_bytes` send anything (tests of the
    worker send invalid frames on purpose) and still count the responses they are owed.
    `stderr_lines` bounds how many of the worker's log lines are kept (None: all).

    Host functions: `register_function(name, fn, ...)` makes a Python callable answer the
    worker's `callback` events for that function, off the reader thread; those callbacks
    never reach `receive` but are kept as `Callback` records (`callbacks`; see
    `bridge.tools.callbacks`). Callbacks for functions not registered here are received
    like any event. `register_tools(session_id)` declares the registered functions.
    """

    def __init__(
        self,
        args: Sequence[str] = (),
        *,
        command: Sequence[str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None,
        stderr_lines: int | None = STDERR_TAIL_LINES,
    ) -> None:
        self.argv = [*(command or default_worker_command()), *args]
        self.process = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            # A copy even to inherit: with env=None the vfork'd child reads the C environ,
            # which another thread's setenv may be moving (the Errno 14 seen once).
            env=dict(os.environ) if env is None else env,
        )
        # Any frame a 4-byte length allows is read: the worker bounds its own replies
        # (--max-reply-bytes), and a test may raise that bound as far as it likes.
        self._connection = HostConnection(MAX_LENGTH)
        # The connection's sends must come one at a time, in the order they are written.
        self._send_lock = threading.Lock()
        self._inbox: queue.SimpleQueue[HostItem | _Eof] = queue.SimpleQueue()
        self._stderr: deque[str] = deque(maxlen=stderr_lines)
        self._ids = itertools.count(1)
        self.output_closed = False
        self.backlog: list[dict[str, Any]] = []
        self._host = CallbackServer(self._send_request)
        self._threads = [
            threading.Thread(target=self._read_frames, name="worker-frames", daemon=True),
            threading.Thread(target=self._read_stderr, name="worker-stderr", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    # --- threads ---

    def _read_frames(self) -> None:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        while True:
            try:
                data = os.read(fd, READ_CHUNK)
            except OSError:
                data = b""
            if not data:
                self._host.settle_all()
                self._inbox.put(_Eof())
                return
            for item in self._connection.receive_data(data):
                if not self._host.take(item):
                    self._inbox.put(item)

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            self._stderr.append(raw.decode("utf-8", "replace").rstrip("\n"))

    @property
    def pid(self) -> int:
        return self.process.pid

    # --- host functions (see bridge.tools.callbacks.CallbackServer) ---

    def register_function(
        self,
        name: str,
        fn: HostCallable,
        *,
        description: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        pass_callback: bool = False,
    ) -> HostFunction:
        """Answer the worker's callbacks for `name` with `fn`, called with the callback's
        `args` as keyword arguments (after the `Callback` record if `pass_callback`).
        `description` and `parameters` are what `register_tools` declares. Registering a
        name again replaces its callable; callbacks already running keep the old one."""
        return self._host.register(HostFunction(name, fn, description, parameters,
                                                pass_callback))

    def unregister_function(self, name: str) -> None:
        """Stop answering callbacks for `name` (they reach `receive` again)."""
        self._host.unregister(name)

    @property
    def functions(self) -> dict[str, HostFunction]:
        return self._host.functions

    def declarations(self, names: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """The `register_tools` entries of the registered functions (or of `names`, in
        that order; KeyError for one not registered)."""
        return self._host.declarations(names)

    def register_tools(
        self,
        session_id: str | None = None,
        names: Sequence[str] | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> Any:
        """Declare the registered functions (or `names`) in a session (the default one
        when None) with `register_tools`; returns its result, raises RequestFailed."""
        args: dict[str, Any] = {"tools": self.declarations(names)}
        if session_id is not None:
            args["session_id"] = session_id
        return self.call("register_tools", args, timeout)

    @property
    def callbacks(self) -> list[Callback]:
        """The callbacks registered functions took, in the order they arrived: every one
        not yet settled, and the latest 1,000 settled ones."""
        return self._host.callbacks

    def callback(self, callback_id: str) -> Callback | None:
        return self._host.callback(callback_id)

    # --- sending ---

    def send_bytes(self, data: bytes) -> None:
        """Write raw bytes (not necessarily whole frames); raises WorkerExited if the
        worker no longer reads."""
        with self._send_lock:
            self._write(self._connection.send_raw(data))

    def send_payload(self, payload: bytes) -> None:
        """Write one frame holding `payload`."""
        self.send_bytes(encode_frame(payload))

    def send(self, value: Any) -> None:
        """Write any value as one frame, unchecked (a request or not)."""
        with self._send_lock:
            self._write(self._connection.send_unchecked(value))

    def _send_request(self, message: dict[str, Any]) -> None:
        """Write a request the protocol allows; LocalProtocolError (nothing written) if
        it is malformed or its id is in flight."""
        with self._send_lock:
            self._write(self._connection.send_request(message))

    def _write(self, data: bytes) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(data)
            self.process.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            raise WorkerExited(self.process.poll()) from None

    # --- receiving ---

    def receive(self, timeout: float | None) -> dict[str, Any] | None:
        """The next message, or None if none came within `timeout` seconds.

        Raises WorkerExited once the worker's output is closed and drained, and
        ValueError for a frame that is not a msgpack map.
        """
        if self.output_closed:
            raise WorkerExited(self._reap())
        try:
            item = self._inbox.get(timeout=timeout) if timeout is None or timeout > 0 else (
                self._inbox.get_nowait()
            )
        except queue.Empty:
            return None
        if isinstance(item, _Eof):
            self.output_closed = True
            raise WorkerExited(self._reap())
        if isinstance(item, InvalidFrame):
            shown = b"" if item.payload is None else item.payload[:80]
            raise ValueError(f"the worker sent a bad frame ({item.error.message}): {shown!r}")
        # Responses (owed or not) and events alike: a test host judges them itself.
        return item.message

    def request(
        self, message: dict[str, Any], timeout: float = DEFAULT_TIMEOUT_S
    ) -> dict[str, Any]:
        """Send a message as it is (unchecked, so tests may send anything) and wait for the
        response under its id; other messages go to `backlog`."""
        self.send(message)
        return self.response(message.get("id"), timeout)

    def response(self, request_id: Any, timeout: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
        """The response to a request sent earlier (by `send`); other messages go to
        `backlog`."""
        return self._gather([request_id], timeout)[request_id]

    def new_id(self) -> int:
        return next(self._ids)

    def call(
        self,
        command: str,
        args: dict[str, Any] | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        *,
        timeout_ms: int | None = None,
    ) -> Any:
        """Run one command and return its result; raises RequestFailed on an error reply.
        `timeout_ms` is the request's own (the worker's) timeout; `timeout` bounds the
        wait here, in seconds."""
        return self.call_many([(command, args)], timeout, timeout_ms=timeout_ms)[0]

    def call_many(
        self,
        calls: Sequence[tuple[str, dict[str, Any] | None]],
        timeout: float = DEFAULT_TIMEOUT_S,
        *,
        timeout_ms: int | None = None,
    ) -> list[Any]:
        """Send every request at once (they run concurrently), then gather the results in
        the order given; raises RequestFailed for the first error reply, and
        LocalProtocolError (before sending it) for a request the protocol forbids.
        `timeout_ms`, when given, is every request's envelope `timeout_ms`."""
        ids = []
        for command, args in calls:
            ids.append(self.new_id())
            message: dict[str, Any] = {"id": ids[-1], "command": command, "args": args or {}}
            if timeout_ms is not None:
                message["timeout_ms"] = timeout_ms
            self._send_request(message)
        responses = self._gather(ids, timeout)
        results = []
        for request_id in ids:
            response = responses[request_id]
            if not response["success"]:
                raise RequestFailed(response["error"])
            results.append(response["result"])
        return results

    def _gather(self, ids: Sequence[Any], timeout: float) -> dict[Any, dict[str, Any]]:
        """The responses to these request ids, by id: from the backlog first, then as they
        arrive; every other message goes to the backlog."""
        pending = set(ids)
        responses: dict[Any, dict[str, Any]] = {}
        for held in [m for m in self.backlog if "event" not in m and m.get("id") in pending]:
            self.backlog.remove(held)
            responses[held["id"]] = held
            pending.discard(held["id"])
        deadline = time.monotonic() + timeout
        while pending:
            got = self.receive(deadline - time.monotonic())
            if got is None:
                missing = ", ".join(repr(request_id) for request_id in sorted(pending, key=str))
                raise TimeoutError(f"no response to {missing} within {timeout} s")
            if "event" not in got and got.get("id") in pending:
                responses[got["id"]] = got
                pending.discard(got["id"])
            else:
                self.backlog.append(got)
        return responses

    def wait_event(self, name: str, timeout: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
        for index, held in enumerate(self.backlog):
            if held.get("event") == name:
                return self.backlog.pop(index)
        deadline = time.monotonic() + timeout
        while True:
            got = self.receive(deadline - time.monotonic())
            if got is None:
                raise TimeoutError(f"no {name!r} event within {timeout} s")
            if got.get("event") == name:
                return got
            self.backlog.append(got)

    # --- ending ---

    def _reap(self) -> int | None:
        try:
            return self.process.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            return None

    def close_input(self) -> None:
        if self.process.stdin is not None and not self.process.stdin.closed:
            try:
                self.process.stdin.close()
            except OSError:
                pass

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None if the worker is still running after `timeout`."""
        try:
            return self.process.wait(timeout=max(timeout, 0))
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def close(self, timeout: float = 5.0) -> int | None:
        """Close stdin (EOF: the host is gone), wait for the exit, kill if it hangs."""
        self.close_input()
        code = self.wait(timeout)
        if code is None:
            self.kill()
        # The readers stop at EOF, which comes once the worker (and any child of it still
        # holding the pipes) is gone; a pipe is closed only after its reader let go of it.
        for thread in self._threads:
            thread.join(READER_JOIN_S)
        for stream, thread in zip((self.process.stdout, self.process.stderr), self._threads,
                                  strict=True):
            if stream is not None and not thread.is_alive():
                stream.close()
        return code

    def stderr_tail(self) -> list[str]:
        self._settle_stderr()
        return list(self._stderr)

    def stderr_text(self) -> str:
        self._settle_stderr()
        return "\n".join(self._stderr)

    def _settle_stderr(self) -> None:
        # Once the worker has exited its stderr is finite: let the reader take the last
        # lines (they explain the exit) before anyone reads them.
        if self.process.poll() is not None:
            self._threads[1].join(READER_JOIN_S)

    def __enter__(self) -> WorkerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
