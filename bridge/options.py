"""Worker settings, from the command line."""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, fields
from pathlib import Path

from dspy_bridge import __version__
from dspy_bridge.domain.limits import DEFAULT_API_KEY_ENV_ALLOW, CacheLimits, SessionLimits
from dspy_bridge.protocol import PROTOCOL_VERSION
from dspy_bridge.protocol.codec import DEFAULT_MAX_ITEMS
from dspy_bridge.protocol.framing import DEFAULT_MAX_FRAME_BYTES


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    max_in_flight: int = 256
    max_in_flight_bytes: int = 256 * 1024 * 1024
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    max_frame_items: int = DEFAULT_MAX_ITEMS
    max_reply_bytes: int = DEFAULT_MAX_FRAME_BYTES
    max_outbox_bytes: int = 64 * 1024 * 1024
    log_level: str = "info"
    enable_test_commands: bool = False
    worker_id: str | None = None
    default_grace_ms: int = 5000
    callback_timeout_ms: int = 60_000
    max_sessions: int = 10_000
    max_programs_per_session: int = 1_000
    max_input_bytes: int = 1024 * 1024
    max_session_bytes: int = 16 * 1024 * 1024
    max_stored_bytes: int = 512 * 1024 * 1024
    max_cache_entries: int = 10_000
    max_cache_bytes: int = 256 * 1024 * 1024
    disk_cache_root: Path | None = None
    checkpoint_dir: Path | None = None
    max_disk_cache_bytes: int = 1024 * 1024 * 1024
    session_idle_ttl_s: float | None = None
    record: Path | None = None
    max_log_queue: int = 10_000
    api_key_env_allow: tuple[str, ...] = DEFAULT_API_KEY_ENV_ALLOW
    # Python modules whose dspy.Module classes programs may be made from (operator code)
    modules: tuple[str, ...] = ()
    # How long the idle loop polls for the next frame before it sleeps (0: it sleeps at once).
    # On by default, as the BEAM's schedulers spin before they sleep: a host that answers
    # within it finds the worker awake, and waking a sleeping core cost one request at a
    # time more than the polling (docs/benchmarks.md); an idle worker still sleeps.
    busy_wait_us: int = 50

    def session_limits(self) -> SessionLimits:
        return SessionLimits(
            self.max_sessions,
            self.max_programs_per_session,
            self.max_session_bytes,
            self.max_stored_bytes,
        )

    def cache_limits(self) -> CacheLimits:
        return CacheLimits(
            self.max_cache_entries,
            self.max_cache_bytes,
            None if self.disk_cache_root is None else str(self.disk_cache_root),
            self.max_disk_cache_bytes,
        )

    def limits(self) -> dict[str, int]:
        """The byte and count bounds a host should know before sending (in `ready`)."""
        return {
            "max_frame_bytes": self.max_frame_bytes,
            "max_frame_items": self.max_frame_items,
            "max_reply_bytes": self.max_reply_bytes,
            "max_in_flight": self.max_in_flight,
            "max_in_flight_bytes": self.max_in_flight_bytes,
            "max_input_bytes": self.max_input_bytes,
        }


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _microseconds(text: str) -> int:
    value = int(text)
    if not 0 <= value <= MAX_BUSY_WAIT_US:
        raise argparse.ArgumentTypeError(
            f"must be an integer from 0 to {MAX_BUSY_WAIT_US}, got {text}")
    return value


# A busy wait is for the gap between one request and the next, never for idleness.
MAX_BUSY_WAIT_US = 10_000


def _module_name(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", text):
        raise argparse.ArgumentTypeError(f"not a Python module name: {text!r}")
    return text


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


# The positive-integer flags (`--max-in-flight` sets `max_in_flight`): name and help.
COUNT_FLAGS: dict[str, str] = {
    "max_in_flight": "concurrent requests beyond which work is refused with limit_exceeded",
    "max_in_flight_bytes": "frame bytes of the requests in flight beyond which new work is "
    "refused with limit_exceeded",
    "max_frame_bytes": "largest accepted frame; larger frames are skipped with invalid_frame",
    "max_frame_items": "most msgpack items (entries, elements, containers) in one frame",
    "max_reply_bytes": "largest frame the worker sends; a larger reply becomes limit_exceeded",
    "max_outbox_bytes": "reply bytes the host has not read beyond which no request is read",
    "default_grace_ms": "grace for in-flight work on shutdown without grace_ms, and on SIGTERM",
    "callback_timeout_ms": "longest wait for one callback's answer from the host",
    "max_sessions": "sessions beyond which a new one is refused with limit_exceeded",
    "max_programs_per_session": "programs one session may hold",
    "max_input_bytes": "largest msgpack size of one execute_program's inputs",
    "max_session_bytes": "msgpack bytes one session may store (its LM config, programs, demos)",
    "max_stored_bytes": "msgpack bytes all sessions may store together",
    "max_cache_entries": "most answers the memory cache holds (and configure_cache may ask)",
    "max_cache_bytes": "most bytes of answers the memory cache holds",
    "max_disk_cache_bytes": "largest disk cache configure_cache may ask for (and its default)",
    "max_log_queue": "log lines waiting for stderr beyond which new ones are dropped (counted)",
}


def build_parser() -> argparse.ArgumentParser:
    defaults = WorkerOptions()
    parser = argparse.ArgumentParser(
        prog="dspy-bridge",
        description="Run a dspy-bridge worker on stdin/stdout (4-byte length-prefixed msgpack). "
        "`dspy-bridge replay FILE...` replays transcripts instead.",
    )
    add = parser.add_argument
    add("--version", action="version",
        version=f"dspy-bridge {__version__} (protocol {PROTOCOL_VERSION})")
    for name, help_text in COUNT_FLAGS.items():
        flag = "--" + name.replace("_", "-")
        add(flag, type=_positive_int, default=getattr(defaults, name), metavar="N", help=help_text)
    add(
        "--log-level",
        default=defaults.log_level,
        choices=["debug", "info", "warning", "error", "critical"],
        help="stderr log level",
    )
    add(
        "--enable-test-commands",
        action="store_true",
        help="enable test-only commands (sleep, echo, ...); never in production",
    )
    add("--worker-id", default=None, help="id reported in ready/ping (default: generated)")
    add(
        "--disk-cache-root",
        type=Path,
        default=None,
        help="the directory disk caches may live in (default: no disk cache)",
    )
    add(
        "--session-idle-ttl-s",
        type=_positive_float,
        default=None,
        help="evict sessions idle this long (default: never), with a session_evicted event",
    )
    add(
        "--checkpoint-dir",
        type=Path,
        default=None,
        help="where compile_program keeps checkpoints (default: no checkpoints)",
    )
    add(
        "--modules",
        action="append",
        metavar="MODULE",
        type=_module_name,
        default=None,
        help="a Python module whose dspy.Module classes may be created as programs "
        "(program_type 'MODULE:Class'; repeatable)",
    )
    add(
        "--busy-wait-us",
        type=_microseconds,
        default=defaults.busy_wait_us,
        metavar="US",
        help="poll this long for the next frame before sleeping: lower latency one "
        "request at a time, for CPU spent polling (default: %(default)s)",
    )
    add("--record", type=Path, default=None, help="append every frame to this transcript")
    add(
        "--api-key-env-allow",
        action="append",
        metavar="GLOB",
        default=None,
        help="environment variable names api_key_env may name (shell-style pattern, "
        "repeatable; default *_API_KEY)",
    )
    return parser


def parse_options(argv: list[str]) -> WorkerOptions:
    namespace = build_parser().parse_args(argv)
    values = {f.name: getattr(namespace, f.name) for f in fields(WorkerOptions)}
    # Given at all, the list replaces the default (an operator may want no *_API_KEY).
    values["api_key_env_allow"] = tuple(values["api_key_env_allow"] or DEFAULT_API_KEY_ENV_ALLOW)
    values["modules"] = tuple(values["modules"] or ())
    return WorkerOptions(**values)
