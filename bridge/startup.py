"""Phase one of start-up: validate the flags and announce `ready`, importing almost nothing.

pydantic, structlog, asyncio and the handlers take longer to import than a host should
wait for `ready`; they load in phase two (`main._serve`), and DSPy after that, in the
background. Requests sent meanwhile wait in the pipe and are read once the loop runs.
"""

from __future__ import annotations

import os
import platform
import signal
import socket
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

from dspy_bridge import __version__
from dspy_bridge.commands.registry import command_names
from dspy_bridge.options import WorkerOptions
from dspy_bridge.protocol import PROTOCOL_VERSION, codec
from dspy_bridge.protocol.framing import encode_frame


class HeldSignals:
    """SIGTERM/SIGINT kept, not obeyed, until the loop installs its own handlers: after
    `ready`, a SIGTERM must always mean a graceful shutdown. The loop replays `received`."""

    def __init__(self) -> None:
        self.received: list[int] = []

    def hold(self) -> HeldSignals:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda received, _frame: self.received.append(received))
        return self


def open_record_file(path: Path | None) -> TextIO | None:
    """The `--record` file, opened for appending before `ready`: a path that cannot be
    written is a bad flag (exit status 2), never a worker that announced itself and died."""
    if path is None:
        return None
    try:
        return open(path, "a", encoding="utf-8")  # lives as long as the worker
    except OSError as exc:
        print(f"dspy-bridge: cannot record to {path}: {exc}", file=sys.stderr)
        sys.exit(2)


def announce(options: WorkerOptions, protocol_out: int) -> dict[str, Any]:
    """Write the `ready` event to the protocol descriptor and return it."""
    ready = {
        "event": "ready",
        "protocol_version": PROTOCOL_VERSION,
        "worker_id": options.worker_id
        or f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}",
        "pid": os.getpid(),
        "commands": command_names(include_test_only=options.enable_test_commands),
        "versions": _versions(),
        "limits": options.limits(),
    }
    frame = memoryview(encode_frame(codec.pack(ready)))
    while frame:
        frame = frame[os.write(protocol_out, frame) :]
    return ready


def _versions() -> dict[str, str]:
    versions = {"bridge": __version__, "python": platform.python_version()}
    for package in ("dspy", "msgpack", "pydantic"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "missing"
    return versions
