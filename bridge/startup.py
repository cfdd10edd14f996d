"""Phase one of start-up: validate the flags and announce `ready`, importing almost nothing.

pydantic, structlog, asyncio and the handlers take longer to import than a host should
wait for `ready`; they load in phase two (`main._serve`), and DSPy after that, in the
background. Requests sent meanwhile wait in the pipe and are read once the loop runs.
"""

from __future__ import annotations

import os
import platform
import re
import signal
import socket
import sys
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
    versions.update(installed_versions(("dspy", "msgpack", "pydantic")))
    return versions


DIST_INFO = re.compile(r"(?P<name>[^-]+)-(?P<version>[^-]+)\.dist-info")


def installed_versions(names: tuple[str, ...]) -> dict[str, str]:
    """The installed version of each distribution ("missing" when it is not installed).

    Read from the `{name}-{version}.dist-info` directories on sys.path, as the packaging
    spec names them (the first on the path wins, as for the import): importing
    importlib.metadata alone takes ~25 ms, a sixth of the worker's start-up. A
    distribution installed another way (an .egg-info) is asked of importlib.metadata."""
    wanted = {_normalized(name): name for name in names}
    found: dict[str, str] = {}
    for entry in sys.path:
        try:
            listing = os.listdir(entry or ".")
        except OSError:
            continue
        for item in listing:
            match = DIST_INFO.fullmatch(item)
            if match is None:
                continue
            name = wanted.get(_normalized(match["name"]))
            if name is not None and name not in found:
                found[name] = match["version"]
        if len(found) == len(names):
            return found
    from importlib import metadata

    for name in names:
        if name not in found:
            try:
                found[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                found[name] = "missing"
    return found


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()
