"""Replaying transcripts against fresh workers: results, reports and the entry points.

Each file gets a fresh worker (and a fresh one again at every `worker_args` step, so
a file that several recorded sessions were appended to replays session by session).
Steps run top to bottom: sends are written at once; an `expect` waits for the response
with its id (responses may come in any order; ones that arrived early wait in a
buffer), an `expect_event` for a matching event. The first unmet expectation fails the
file with a diff. Importable: `replay_file(path)` returns a `ReplayResult`. The playing
itself is `bridge.tools.player`; the command line is `bridge.tools.replay_cli`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dspy_bridge.tools import transcript as tx
from dspy_bridge.tools.player import DEFAULT_TIMEOUT_S, Failure, Player, PlayFailed

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "Failure",
    "Player",
    "ReplayResult",
    "replay_file",
    "replay_steps",
    "replay_text",
]


# ----- results -----


@dataclass(slots=True)
class ReplayResult:
    path: str
    failure: Failure | None = None
    steps: int = 0
    duration_s: float = 0.0
    # (transcript line, actual message) for every expectation met, in order.
    matched: list[tuple[int, dict[str, Any]]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.failure is None

    def summary(self) -> str:
        if self.failure is None:
            return f"PASS {self.path} ({self.steps} steps, {self.duration_s:.2f} s)"
        where = f" (line {self.failure.line})" if self.failure.line else ""
        return f"FAIL {self.path}{where}: {self.failure.message}"

    def report(self) -> str:
        """The summary line and, on failure, the diff and the worker's stderr tail."""
        lines = [self.summary()]
        if self.failure is not None:
            if self.failure.detail:
                lines.extend("  " + line for line in self.failure.detail.splitlines())
            if self.failure.stderr:
                lines.append("  worker stderr (last lines):")
                lines.extend("    | " + line for line in self.failure.stderr)
        return "\n".join(lines)


# ----- entry points -----


def replay_steps(
    steps: Iterable[tx.Step],
    *,
    name: str = "<transcript>",
    timeout: float = DEFAULT_TIMEOUT_S,
    worker_args: Sequence[str] = (),
    worker_command: Sequence[str] | None = None,
    strict: bool = False,
    cwd: str | os.PathLike[str] | None = None,
    trace: Callable[[str], None] | None = None,
) -> ReplayResult:
    """Play parsed steps; `trace`, if given, is called with a line per frame in and out."""
    started = time.monotonic()
    result = ReplayResult(name)
    player = Player(
        timeout=timeout,
        worker_args=worker_args,
        worker_command=worker_command,
        strict=strict,
        cwd=cwd,
        trace=trace,
    )
    steps = list(steps)
    try:
        result.steps = player.play(steps)
    except PlayFailed as failed:
        result.failure = failed.failure
        result.steps = len(steps)
    result.matched = player.matched
    result.duration_s = time.monotonic() - started
    return result


def replay_text(text: str, *, name: str = "<transcript>", **options: Any) -> ReplayResult:
    try:
        steps = tx.parse(text)
    except tx.TranscriptError as exc:
        return ReplayResult(name, Failure(f"unreadable transcript: {exc.message}", exc.line))
    return replay_steps(steps, name=name, **options)


def replay_file(path: str | os.PathLike[str], **options: Any) -> ReplayResult:
    """Replay one transcript file against a fresh worker (see `replay_steps` for options)."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # a BOM is tolerated
    except (OSError, UnicodeDecodeError) as exc:
        return ReplayResult(name, Failure(f"cannot read the transcript: {exc}"))
    return replay_text(text, name=name, **options)
