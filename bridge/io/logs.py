"""structlog set-up: JSON lines on stderr, secrets redacted, never blocking the worker.

Every line (structlog's, the stdlib loggers' of litellm and httpx, a stray `print`)
goes to fd 2 at once when stderr is a pipe that takes it now, else into one bounded
queue that a thread of its own writes. A host that stops draining the worker's stderr
then stalls only that thread: replies and the exit go on, and lines past the bound are
dropped and counted.
"""

from __future__ import annotations

import contextvars
import io
import json
import logging
import math
import os
import queue
import select
import stat
import sys
import threading
import time
from collections.abc import MutableMapping
from typing import Any

import structlog

from dspy_bridge.domain.redaction import book, redact, scrub

DEFAULT_MAX_QUEUED = 10_000


class LogQueue:
    """Text for stderr: written at once while the pipe takes it, else queued for the
    `log-writer` thread (a thread wake per line costs a request more than its line)."""

    def __init__(self, max_queued: int = DEFAULT_MAX_QUEUED, fd: int = 2) -> None:
        self._lines: queue.Queue[bytes] = queue.Queue(max_queued)
        self._fd = fd
        self._at_once = _at_once_descriptor(fd)
        self._at_once_lock = threading.Lock()
        self.dropped = 0
        threading.Thread(target=self._write_lines, name="log-writer", daemon=True).start()

    @property
    def queued(self) -> int:
        return self._lines.qsize()

    def write(self, text: str) -> int:
        self._put(text.encode("utf-8", "replace"))
        return len(text)

    def write_lines(self, lines: list[str]) -> None:
        """Several whole lines in as few writes as keep each write at most PIPE_BUF bytes
        (so a pipe still takes each whole or not at all): a burst of requests' lines costs
        a write per few dozen lines, not one each."""
        chunk: list[bytes] = []
        size = 0
        for line in lines:
            data = line.encode("utf-8", "replace")
            if chunk and size + len(data) > select.PIPE_BUF:
                self._put(b"".join(chunk))
                chunk, size = [], 0
            chunk.append(data)
            size += len(data)
        if chunk:
            self._put(b"".join(chunk))

    def _put(self, data: bytes) -> None:
        if not self._written_at_once(data):
            try:
                self._lines.put_nowait(data)
            except queue.Full:
                self.dropped += 1

    def flush(self) -> None:
        """Nothing to do: the thread writes as soon as it can (see `drain` for the exit)."""

    def drain(self, timeout: float) -> None:
        """Wait, at most `timeout`, for the queued lines to be written."""
        done = self._lines.all_tasks_done  # the queue's own condition, notified by task_done
        with done:
            done.wait_for(lambda: not self._lines.unfinished_tasks, timeout)

    def _written_at_once(self, data: bytes) -> bool:
        """Whether `data` went out now. Only while nothing is queued (lines keep their
        order), and only a line of at most PIPE_BUF bytes: the pipe takes that whole or
        not at all, so a line is never split."""
        if self._at_once is None or len(data) > select.PIPE_BUF:
            return False
        with self._at_once_lock:
            if self._lines.unfinished_tasks:
                return False
            try:
                os.write(self._at_once, data)
            except BlockingIOError:
                return False
            except OSError:
                pass  # stderr is gone: the line is lost, never the worker
            return True

    def _write_lines(self) -> None:
        while True:
            data = memoryview(self._lines.get())
            try:
                while data:
                    data = data[os.write(self._fd, data) :]
            except OSError:
                pass  # stderr is gone: the line is lost, never the worker
            finally:
                self._lines.task_done()


def _at_once_descriptor(fd: int) -> int | None:
    """Where a line may be written without ever blocking the writer, or None.

    A regular file is `fd` itself (it takes a write at once). A pipe is opened again,
    non-blocking, through /proc: O_NONBLOCK belongs to an open file description, which
    fd 1 and 2 share with every process that inherited them (and with C code writing
    there), so setting it on fd 2 would hand them EAGAIN; the new description is ours
    alone. Anything else (a terminal, a socket) is left to the thread."""
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISREG(mode):
            return fd
        if stat.S_ISFIFO(mode):
            return os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        pass
    return None


class PrintedLines(io.TextIOBase):
    """`sys.stdout`/`sys.stderr` for Python code in the worker (a library's `print`, a
    warning): each line becomes a JSON log line (`event: "printed"`, with `stream` and
    `text`), so stderr carries JSON lines only. A line is held until its newline, at most
    MAX_HELD characters."""

    MAX_HELD = 8192

    def __init__(self, stream: str) -> None:
        self._stream = stream
        self._held = ""
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            *lines, self._held = (self._held + text).split("\n")
            if len(self._held) > self.MAX_HELD:
                lines.append(self._held)
                self._held = ""
        for line in lines:
            if line.strip():
                structlog.get_logger("printed").warning(
                    "printed", stream=self._stream, text=line[:self.MAX_HELD])
        return len(text)


# The worker's own words in every line: never scrubbed, so a tenant whose "key" is
# `info` cannot turn a line's level into `<redacted>`.
STRUCTURE_KEYS = ("event", "level", "timestamp", "command", "outcome", "worker_id")


def _redact(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    fixed = {key: event_dict.pop(key) for key in STRUCTURE_KEYS if key in event_dict}
    fixed.update(redact(event_dict, secrets=book.held()))
    return fixed


def _stamp_utc(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    event_dict["timestamp"] = _utc_now()
    return event_dict


def _utc_now() -> str:
    """structlog's `TimeStamper(fmt="iso", utc=True)`, the same text
    (`2026-01-02T03:04:05.123456Z`, no fraction at a whole second), for a fraction of
    its cost: the date and time of day are formatted once a second."""
    global _last_second
    seconds, nanoseconds = divmod(time.time_ns(), 1_000_000_000)
    last = _last_second  # one read: another thread may replace it meanwhile
    if seconds != last[0]:
        last = _last_second = (seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)))
    micro = nanoseconds // 1000
    return f"{last[1]}.{micro:06d}Z" if micro else f"{last[1]}Z"


_last_second: tuple[int, str] = (-1, "")  # the second last stamped, and its text


def _json_line(event_dict: Any, **_dumps_kw: Any) -> str:
    """`json.dumps` with one encoder for every line (dumps builds one a call when given
    `default`); values JSON cannot carry are written as their repr."""
    return _ENCODER.encode(event_dict)


_ENCODER = json.JSONEncoder(default=repr)


def _stamp_worker(worker_id: str) -> Any:
    def stamp(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
        event_dict.setdefault("worker_id", worker_id)
        return event_dict

    return stamp


class RequestLines:
    """Each request's one line (`event: "request"`), rendered directly: the same text the
    structlog chain writes for it (held equal by a property test) at a fifth of its cost,
    since it is written once a request. Its fields are passed, never read from the
    context, so the line can be rendered wherever the request ends."""

    def __init__(self, sink: LogQueue, level: str, worker_id: str | None = None) -> None:
        self.enabled = logging.getLevelName(level.upper()) <= logging.INFO
        self._sink = sink
        self._worker = "" if worker_id is None else f', "worker_id": {_ENCODER.encode(worker_id)}'

    def render(
        self, request_id: int | str | None, command: str, duration_ms: float, outcome: str,
        *, session_id: str | None = None, message: str | None = None,
    ) -> str:
        # The chain's order: the worker's own words (never scrubbed), then the rest.
        secrets = book.held()
        text = (
            f'{{"event": "request", "level": "info", "timestamp": "{_utc_now()}", '
            f'"command": {_ENCODER.encode(command)}, "outcome": {_ENCODER.encode(outcome)}'
            f'{self._worker}, "id": {_scalar(request_id, secrets)}, '
            f'"duration_ms": {_scalar(round(duration_ms, 3), secrets)}'
        )
        if message is not None:
            text += f', "message": {_scalar(message, secrets)}'
        if session_id is not None:
            text += f', "session_id": {_scalar(session_id, secrets)}'
        return text + "}\n"

    def write(self, lines: list[str]) -> None:
        self._sink.write_lines(lines)


def _scalar(value: int | float | str | None, secrets: frozenset[str]) -> str:
    if isinstance(value, str):
        return _ENCODER.encode(scrub(value, secrets))
    if value.__class__ is int or (value.__class__ is float and math.isfinite(value)):
        return repr(value)  # what json writes for them, without its encoder's set-up
    return _ENCODER.encode(value)


def bind_request(
    request_id: int | str, command: str, session_id: str | None
) -> contextvars.Token[dict[str, Any] | None]:
    """Name the running request in every line logged in this context: a request's task
    (a task's context is its own: this never reaches another request's lines), or a
    control command until `unbind_request` with the token returned."""
    fields: dict[str, Any] = {"id": request_id, "command": command}
    if session_id is not None:
        fields["session_id"] = session_id
    return _REQUEST.set(fields)


def unbind_request(token: contextvars.Token[dict[str, Any] | None]) -> None:
    _REQUEST.reset(token)


# One variable for the request's fields: cheaper to set, and to merge into a line, than
# structlog's one variable a key (whose merge reads every variable in the context).
_REQUEST: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "dspy_bridge_request", default=None
)


def _merge_request(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    bound = _REQUEST.get()
    if bound is not None:
        for key, value in bound.items():
            event_dict.setdefault(key, value)
    return event_dict


def route_std_streams() -> None:
    """Python-level writes to stdout/stderr (warnings, a stray print) become log lines."""
    sys.stdout = PrintedLines("stdout")
    sys.stderr = PrintedLines("stderr")


class StdlibToStructlog(logging.Handler):
    """A stdlib log record as one of our JSON lines (`event: "library_log"`, with the
    library's `logger` and `message`), so nothing but JSON reaches stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            structlog.get_logger("library").log(
                record.levelno, "library_log", logger=record.name,
                message=record.getMessage()[:LIBRARY_MESSAGE_CHARS],
            )
        except Exception:  # noqa: BLE001 - logging must never raise into the library
            self.handleError(record)


LIBRARY_MESSAGE_CHARS = 2000


def configure_logging(level: str, sink: LogQueue, worker_id: str | None = None) -> None:
    """JSON lines into `sink`. Each names the worker (`worker_id`), and a line written
    while a request runs also names it (`id`, `command`, `session_id`: bound by the
    request's task, see `bind_request`)."""
    numeric = logging.getLevelName(level.upper())
    # Libraries that use the stdlib logger (litellm, httpx, DSPy) log JSON lines too.
    # The handler's level too: DSPy sets its loggers' own levels (INFO).
    quiet = max(numeric, logging.WARNING)
    logging.basicConfig(handlers=[StdlibToStructlog(quiet)], level=quiet, force=True)
    structlog.configure(
        processors=[
            _merge_request,
            *([] if worker_id is None else [_stamp_worker(worker_id)]),
            structlog.processors.add_log_level,
            _stamp_utc,
            structlog.processors.format_exc_info,
            _redact,
            structlog.processors.JSONRenderer(serializer=_json_line),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(file=sink),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
