"""structlog set-up: JSON lines on stderr, secrets redacted, never blocking the worker.

Every line (structlog's, the stdlib loggers' of litellm and httpx, a stray `print`)
goes into one bounded queue that a thread of its own writes to fd 2. A host that stops
draining the worker's stderr then stalls only that thread: replies and the exit go on,
and lines past the bound are dropped and counted.
"""

from __future__ import annotations

import io
import logging
import os
import queue
import sys
import threading
from collections.abc import MutableMapping
from typing import Any

import structlog

from dspy_bridge.domain.redaction import book, redact

DEFAULT_MAX_QUEUED = 10_000


class LogQueue:
    """Text for stderr, queued; written by the `log-writer` thread."""

    def __init__(self, max_queued: int = DEFAULT_MAX_QUEUED, fd: int = 2) -> None:
        self._lines: queue.Queue[str] = queue.Queue(max_queued)
        self._fd = fd
        self.dropped = 0
        threading.Thread(target=self._write_lines, name="log-writer", daemon=True).start()

    @property
    def queued(self) -> int:
        return self._lines.qsize()

    def write(self, text: str) -> int:
        try:
            self._lines.put_nowait(text)
        except queue.Full:
            self.dropped += 1
        return len(text)

    def flush(self) -> None:
        """Nothing to do: the thread writes as soon as it can (see `drain` for the exit)."""

    def drain(self, timeout: float) -> None:
        """Wait, at most `timeout`, for the queued lines to be written."""
        done = self._lines.all_tasks_done  # the queue's own condition, notified by task_done
        with done:
            done.wait_for(lambda: not self._lines.unfinished_tasks, timeout)

    def _write_lines(self) -> None:
        while True:
            text = self._lines.get()
            try:
                data = memoryview(text.encode("utf-8", "replace"))
                while data:
                    data = data[os.write(self._fd, data) :]
            except OSError:
                pass  # stderr is gone: the line is lost, never the worker
            finally:
                self._lines.task_done()


class QueueTextStream(io.TextIOBase):
    """`sys.stdout`/`sys.stderr` for Python code in the worker: into the log queue."""

    def __init__(self, sink: LogQueue) -> None:
        self._sink = sink

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        return self._sink.write(text) if text else 0


# The worker's own words in every line: never scrubbed, so a tenant whose "key" is
# `info` cannot turn a line's level into `<redacted>`.
STRUCTURE_KEYS = ("event", "level", "timestamp", "command", "outcome")


def _redact(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    fixed = {key: event_dict.pop(key) for key in STRUCTURE_KEYS if key in event_dict}
    return {**fixed, **redact(dict(event_dict), secrets=book.held())}


def route_std_streams(sink: LogQueue) -> None:
    """Python-level writes to stdout/stderr (warnings, a stray print) go to the queue."""
    sys.stdout = sys.stderr = QueueTextStream(sink)


def configure_logging(level: str, sink: LogQueue) -> None:
    numeric = logging.getLevelName(level.upper())
    # Libraries that use the stdlib logger (litellm, httpx) also go to the queue.
    logging.basicConfig(
        stream=QueueTextStream(sink),
        level=max(numeric, logging.WARNING),
        format="%(message)s",
        force=True,
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redact,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(file=sink),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
