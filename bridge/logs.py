"""structlog set-up: JSON lines on stderr, secrets redacted wherever they appear."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from bridge.redaction import redactor


def _redact(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    return redactor.redact(dict(event_dict))


class StderrSink:
    """stderr for log lines, which never raises: a host that stopped reading our stderr
    must not stop replies or the exit (a BrokenPipeError in a log call would)."""

    def write(self, text: str) -> int:
        try:
            return sys.stderr.write(text)
        except (OSError, ValueError):
            return 0

    def flush(self) -> None:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass


def configure_logging(level: str) -> None:
    numeric = logging.getLevelName(level.upper())
    # Libraries that use the stdlib logger (litellm, httpx) also go to stderr, not fd 1.
    logging.basicConfig(
        stream=StderrSink(), level=max(numeric, logging.WARNING), format="%(message)s"
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
        logger_factory=structlog.PrintLoggerFactory(file=StderrSink()),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
