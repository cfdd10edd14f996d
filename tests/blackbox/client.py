"""A tiny independent host for the dspy-bridge worker, written from PROTOCOL.md alone.

Frames: 4-byte big-endian length, then one msgpack value. A reader thread decodes every
frame the worker sends and checks it against the limits the worker must hold itself to
(size, items, depth 128, UTF-8 strs, string map keys, one value per frame); any breach is
kept in ``Worker.violations`` so a test can assert there were none.
"""

from __future__ import annotations

import itertools
import json
import os
import struct
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import msgpack

ROOT = Path(__file__).resolve().parents[2]  # /work/main
PYTHON = str(ROOT / ".venv" / "bin" / "python")
DEFAULT_TIMEOUT = 30.0
MAX_DEPTH = 128

ERROR_TYPES = {
    "invalid_frame", "invalid_request", "unknown_command", "invalid_args", "not_found",
    "already_exists", "lm_not_configured", "lm_error", "timeout", "cancelled",
    "limit_exceeded", "shutting_down", "engine_unavailable", "internal",
}


class WorkerGone(AssertionError):
    pass


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def pack(value: Any, **kw: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True, **kw)


def shape(value: Any) -> tuple[int, int]:
    """(depth, items) of a decoded value, iteratively. Items are counted as msgpack
    objects (every key, value, element and container one) -- the lower of the two readings
    of the spec's counting rule, so this never flags a frame the worker may legally send."""
    depth = 0
    items = 0
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        items += 1
        if isinstance(v, dict):
            depth = max(depth, d)
            for k, x in v.items():
                stack.append((k, d + 1))
                stack.append((x, d + 1))
        elif isinstance(v, (list, tuple)):
            depth = max(depth, d)
            for x in v:
                stack.append((x, d + 1))
    return depth, items


def non_str_keys(value: Any) -> bool:
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            for k, x in v.items():
                if not isinstance(k, str):
                    return True
                stack.append(x)
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
    return False


def all_strings(value: Any) -> list[str]:
    out: list[str] = []
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, dict):
            for k, x in v.items():
                stack.append(k)
                stack.append(x)
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
    return out


def id_key(i: Any) -> Any:
    # 1 and True hash alike in Python; keep types apart.
    return (type(i).__name__, i)


class Worker:
    _ids = itertools.count(1)

    def __init__(
        self,
        *flags: str,
        env: dict[str, str] | None = None,
        drain_stderr: bool = True,
        read_stdout: bool = True,
        cwd: str | os.PathLike[str] | None = None,
        wait_ready: bool = True,
    ) -> None:
        full_env = dict(os.environ)
        # never reach the network by accident
        for k in list(full_env):
            if k.endswith("_API_KEY"):
                full_env.pop(k, None)
        # Any accidental HTTP(S) goes to a closed local port, never the network.
        for k in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                  "all_proxy"):
            full_env[k] = "http://127.0.0.1:9"
        full_env["NO_PROXY"] = full_env["no_proxy"] = ""
        full_env["OPENAI_BASE_URL"] = full_env["OPENAI_API_BASE"] = "http://127.0.0.1:9/v1"
        if env:
            full_env.update(env)
        self.flags = list(flags)
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "dspy_bridge", *flags],
            cwd=str(cwd or ROOT),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=full_env,
            bufsize=0,
        )
        self.cond = threading.Condition()
        self.frames: list[dict[str, Any]] = []  # decoded, in arrival order
        self.raw_sizes: list[int] = []
        self.replies: dict[Any, list[dict[str, Any]]] = defaultdict(list)
        self.nil_replies: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.violations: list[str] = []
        self.stderr_lines: list[bytes] = []
        self.eof = False
        self.sent_ids: set[Any] = set()
        self.stray: list[dict[str, Any]] = []  # replies carrying an id never sent
        self.limits = {"max_frame_bytes": 64 << 20, "max_frame_items": 1_000_000}
        self.ready: dict[str, Any] | None = None
        self._write_lock = threading.Lock()
        self._reader: threading.Thread | None = None
        if read_stdout:
            self.start_reading()
        if drain_stderr:
            threading.Thread(target=self._drain_stderr, daemon=True).start()
        if wait_ready and read_stdout:
            self.ready = self.wait_event("ready")
            self.limits.update(self.ready.get("limits") or {})

    # ---------------------------------------------------------------- reading
    def start_reading(self) -> None:
        if self._reader is None:
            self._reader = threading.Thread(target=self._read_loop, daemon=True)
            self._reader.start()

    def _read_exact(self, n: int) -> bytes | None:
        buf = bytearray()
        out = self.proc.stdout
        assert out is not None
        while len(buf) < n:
            chunk = out.read(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return bytes(buf)

    def _read_loop(self) -> None:
        try:
            while True:
                head = self._read_exact(4)
                if head is None:
                    break
                (n,) = struct.unpack(">I", head)
                payload = self._read_exact(n)
                if payload is None:
                    with self.cond:
                        self.violations.append(f"truncated frame: declared {n} bytes")
                    break
                self._accept(payload)
        finally:
            with self.cond:
                self.eof = True
                self.cond.notify_all()

    def _accept(self, payload: bytes) -> None:
        problems: list[str] = []
        if len(payload) > self.limits["max_frame_bytes"]:
            problems.append(f"frame of {len(payload)} bytes over max_frame_bytes")
        try:
            up = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=0)
            up.feed(payload)
            value = up.unpack()
            try:
                up.unpack()
                problems.append("trailing bytes after the value")
            except msgpack.OutOfData:
                pass
        except Exception as exc:  # noqa: BLE001 - undecodable output is itself the finding
            with self.cond:
                self.violations.append(f"undecodable frame ({type(exc).__name__}: {exc}): "
                                       f"{payload[:200]!r}")
                self.cond.notify_all()
            return
        depth, items = shape(value)
        if depth > MAX_DEPTH:
            problems.append(f"frame nested {depth} deep")
        if items > self.limits["max_frame_items"]:
            problems.append(f"frame of {items} items over max_frame_items")
        if non_str_keys(value):
            problems.append("a map key that is not a str")
        if not isinstance(value, dict):
            problems.append(f"frame is not a map: {value!r:.200}")
        with self.cond:
            for p in problems:
                self.violations.append(f"{p}: {repr(value)[:300]}")
            if isinstance(value, dict):
                self.frames.append(value)
                self.raw_sizes.append(len(payload))
                if "event" in value and "id" not in value:
                    self.events.append(value)
                elif "id" in value:
                    if value["id"] is None:
                        self.nil_replies.append(value)
                    else:
                        try:
                            k = id_key(value["id"])
                            self.replies[k].append(value)
                            if k not in self.sent_ids:
                                self.stray.append(value)
                                self.violations.append(
                                    f"reply with an id never sent: {value!r:.300}")
                        except TypeError:
                            self.violations.append(f"unhashable reply id: {value!r:.200}")
                    self._check_reply_shape(value)
                else:
                    self.violations.append(f"frame neither reply nor event: {value!r:.200}")
            self.cond.notify_all()

    def _check_reply_shape(self, r: dict[str, Any]) -> None:
        ok = r.get("success")
        if ok is True:
            if "result" not in r:
                self.violations.append(f"success reply without result: {r!r:.200}")
        elif ok is False:
            e = r.get("error")
            if not (isinstance(e, dict) and isinstance(e.get("type"), str)
                    and isinstance(e.get("message"), str)
                    and isinstance(e.get("retryable"), bool)):
                self.violations.append(f"malformed error: {r!r:.300}")
            elif e["type"] not in ERROR_TYPES:
                self.violations.append(f"unknown error type {e['type']!r}")
        else:
            self.violations.append(f"reply without boolean success: {r!r:.200}")

    def _drain_stderr(self) -> None:
        err = self.proc.stderr
        assert err is not None
        try:
            for line in iter(err.readline, b""):
                with self.cond:
                    self.stderr_lines.append(line)
                    self.cond.notify_all()
        except (ValueError, OSError):  # stderr closed under the reader (a test stopping it)
            return

    def stderr_text(self) -> str:
        with self.cond:
            tail = self.stderr_lines[-8:]
        return "".join(line[:300].decode("utf-8", "replace").rstrip("\n") + "\n"
                       for line in tail)

    # ---------------------------------------------------------------- writing
    def register_id(self, rid: Any) -> None:
        try:
            with self.cond:
                self.sent_ids.add(id_key(rid))
        except TypeError:
            pass

    def send_payload(self, payload: bytes, rid: Any = None, known: bool = False) -> None:
        """Send one frame. The request id is registered (so a reply under an id never sent
        is caught): given as `rid`, or decoded from the payload when not `known`."""
        if known:
            self.register_id(rid)
        elif len(payload) < (4 << 20):
            try:
                v = msgpack.unpackb(payload, raw=False, strict_map_key=False)
                if isinstance(v, dict) and "id" in v:
                    self.register_id(v["id"])
            except Exception:  # noqa: BLE001 - undecodable frames carry no usable id
                pass
        self.send_bytes(frame(payload))

    def send_bytes(self, data: bytes) -> None:
        stdin = self.proc.stdin
        assert stdin is not None
        try:
            with self._write_lock:
                stdin.write(data)
                stdin.flush()
        except (BrokenPipeError, ValueError, OSError) as exc:
            raise WorkerGone(f"worker gone while writing ({exc}); exit={self.proc.poll()}; "
                             f"stderr tail:\n{self.stderr_text()}") from exc

    def send(self, msg: Any, **packkw: Any) -> None:
        rid = msg.get("id") if isinstance(msg, dict) else None
        self.send_payload(pack(msg, **packkw), rid, known=isinstance(msg, dict))

    def new_id(self, prefix: str = "bb") -> str:
        return f"{prefix}-{next(self._ids)}"

    def request(self, command: str, args: Any = None, *, id: Any = None,
                timeout_ms: int | None = None, timeout: float = DEFAULT_TIMEOUT,
                omit_args: bool = False) -> dict[str, Any]:
        rid = self.new_id() if id is None else id
        msg: dict[str, Any] = {"id": rid, "command": command}
        if not omit_args:
            msg["args"] = {} if args is None else args
        if timeout_ms is not None:
            msg["timeout_ms"] = timeout_ms
        before = self.reply_count(rid)
        self.send(msg)
        return self.wait_reply(rid, timeout=timeout, n=before + 1)

    def ok(self, command: str, args: Any = None, **kw: Any) -> Any:
        r = self.request(command, args, **kw)
        assert r.get("success") is True, f"{command} {args!r:.300} failed: {r!r:.600}"
        return r["result"]

    def err(self, command: str, args: Any = None, **kw: Any) -> dict[str, Any]:
        r = self.request(command, args, **kw)
        assert r.get("success") is False, f"{command} {args!r:.300} succeeded: {r!r:.600}"
        return r["error"]

    # ---------------------------------------------------------------- waiting
    def _wait(self, pred: Any, what: str, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                v = pred()
                if v is not None:
                    return v
                if self.eof:
                    v = pred()
                    if v is not None:
                        return v
                    raise WorkerGone(f"worker closed stdout while waiting for {what}; "
                                     f"exit={self.proc.poll()}; stderr tail:\n"
                                     f"{self.stderr_text()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {what} within {timeout}s; stderr tail:\n"
                                         f"{self.stderr_text()}")
                self.cond.wait(left)

    def wait_reply(self, rid: Any, timeout: float = DEFAULT_TIMEOUT, n: int = 1) -> Any:
        k = id_key(rid)
        with self.cond:
            strays = len(self.stray)

        def pred() -> Any:
            got = self.replies.get(k, [])
            if len(got) >= n:
                return got[n - 1]
            if len(self.stray) > strays:
                raise AssertionError(
                    f"waiting for the reply to id {rid!r:.80}, a reply came back under an "
                    f"id never sent: {self.stray[-1]!r:.400}")
            return None

        return self._wait(pred, f"reply to id {rid!r:.80}", timeout)

    def reply_count(self, rid: Any) -> int:
        with self.cond:
            return len(self.replies.get(id_key(rid), []))

    def wait_nil_replies(self, n: int, timeout: float = DEFAULT_TIMEOUT) -> list[Any]:
        def pred() -> Any:
            return list(self.nil_replies) if len(self.nil_replies) >= n else None

        return self._wait(pred, f"{n} replies with id nil", timeout)

    def wait_event(self, name: str, timeout: float = DEFAULT_TIMEOUT,
                   where: Any = None) -> dict[str, Any]:
        def pred() -> Any:
            for e in self.events:
                if e.get("event") == name and (where is None or where(e)):
                    return e
            return None

        return self._wait(pred, f"event {name!r}", timeout)

    def wait_stderr(self, needle: bytes, timeout: float = DEFAULT_TIMEOUT) -> bytes:
        def pred() -> Any:
            for line in self.stderr_lines:
                if needle in line:
                    return line
            return None

        return self._wait(pred, f"stderr line with {needle!r}", timeout)

    def ping(self, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
        r = self.request("ping", timeout=timeout)
        assert r.get("success") is True, f"ping failed: {r!r}"
        return r["result"]

    def assert_alive(self) -> None:
        res = self.ping()
        assert res["status"] in ("ok", "engine_failed"), res

    def assert_clean(self) -> None:
        with self.cond:
            assert not self.violations, "worker sent frames breaking the protocol:\n" + \
                "\n".join(self.violations[:10])

    # ---------------------------------------------------------------- ending
    def close_stdin(self) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        except OSError:
            pass

    def wait_exit(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for s in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                if s is not None:
                    s.close()
            except OSError:
                pass

    def stop(self) -> None:
        """Close stdin and wait briefly; kill if it lingers (the EOF timing itself is
        checked by dedicated tests)."""
        self.close_stdin()
        if self.wait_exit(10) is None:
            self.kill()
        else:
            self.kill()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class LazyWorker:
    """A shared worker started inside the first test that asks for it, so a worker that
    refuses its flags shows up as those tests failing (not as fixture errors)."""

    def __init__(self, *flags: str, **kw: Any) -> None:
        self.flags, self.kw = flags, kw
        self.worker: Worker | None = None
        self.error: BaseException | None = None

    def __call__(self) -> Worker:
        if self.error is not None:
            raise AssertionError(f"worker with flags {self.flags} did not start: "
                                 f"{self.error}")
        if self.worker is None:
            try:
                self.worker = Worker(*self.flags, **self.kw)
            except BaseException as exc:
                self.error = exc
                raise
        return self.worker

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()


def mock_session(w: Worker, session: str, answer: Any = "mock answer", **lm: Any) -> Any:
    cfg: dict[str, Any] = {"session_id": session, "model": "mock", "cache": False}
    extra = dict(lm.pop("extra", {}))
    if answer is not None:
        extra.setdefault("default", answer)
    cfg["extra"] = extra
    cfg.update(lm)
    return w.ok("configure_lm", cfg, timeout=60)


def error_fields(error: dict[str, Any]) -> list[str]:
    errs = (error.get("details") or {}).get("errors") or []
    return [e.get("field") for e in errs if isinstance(e, dict)]


def names_field(error: dict[str, Any], field: str) -> bool:
    return any(isinstance(f, str) and (f == field or f.startswith(field + ".")
                                       or f.startswith(field + "["))
               for f in error_fields(error))


def stderr_json_lines(w: Worker) -> list[Any]:
    out = []
    with w.cond:
        lines = list(w.stderr_lines)
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            out.append(line)
    return out


if __name__ == "__main__":  # manual smoke test
    with Worker(*sys.argv[1:]) as w:
        print(w.ready)
        print(w.ping())
