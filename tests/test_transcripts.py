"""Every transcript in tests/transcripts/ replayed against a fresh worker, one case each.

The selected transcripts are replayed concurrently (one per CPU) as soon as the first
case runs; each case then waits for its own result, so the suite takes the time of the
slowest lane rather than the sum.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import pytest

from dspy_bridge.commands.registry import command_names
from dspy_bridge.protocol.errors import ErrorType
from dspy_bridge.tools import transcript as tx
from dspy_bridge.tools.replay import ReplayResult, replay_file

TRANSCRIPTS = Path(__file__).parent / "transcripts"
FILES = sorted(TRANSCRIPTS.glob("*.jsonl"))
REPO = TRANSCRIPTS.parent.parent


def test_the_suite_is_big_enough() -> None:
    assert len(FILES) >= 20


def test_the_suite_touches_every_command_error_type_and_event() -> None:
    """Together the transcripts send every command (test-only ones too), expect every
    error type of the protocol, and expect every event the worker sends."""
    commands: set[str] = set()
    errors: set[Any] = set()
    events: set[Any] = set()
    for path in FILES:
        for step in tx.parse(path.read_text(encoding="utf-8")):
            if isinstance(step, tx.Send) and isinstance(step.message.get("command"), str):
                commands.add(step.message["command"])
            elif isinstance(step, tx.Expect) and isinstance(step.message.get("error"), dict):
                errors.add(step.message["error"].get("type"))
            elif isinstance(step, tx.ExpectEvent):
                events.add(step.message.get("event"))
    assert set(command_names(include_test_only=True)) <= commands
    # engine_unavailable needs a broken DSPy installation (an environment a transcript
    # cannot set): tests/test_hardening.py covers it against a real worker.
    assert {error.value for error in ErrorType} - {"engine_unavailable"} <= errors
    assert {"ready", "session_evicted", "callback", "callback_abandoned"} <= events


# A bound on waiting, not a wait: on a loaded machine the first DSPy command of a worker
# (which waits for DSPy to import) can take well over replay's default 10 s.
EXPECT_TIMEOUT_S = 90.0


@pytest.fixture(scope="module")
def replays(request: pytest.FixtureRequest) -> Iterator[dict[Path, Future[ReplayResult]]]:
    selected = [
        cast(Path, item.callspec.params["path"])
        for item in request.session.items
        if isinstance(item, pytest.Function)
        and item.originalname == "test_transcript"
        and hasattr(item, "callspec")
    ]
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1)) as pool:
        futures = {
            path: pool.submit(replay_file, path, cwd=REPO, timeout=EXPECT_TIMEOUT_S)
            for path in selected
        }
        yield futures
        for future in futures.values():
            future.cancel()


@pytest.mark.parametrize("path", FILES, ids=[path.stem for path in FILES])
def test_transcript(path: Path, replays: dict[Path, Future[ReplayResult]]) -> None:
    future = replays.get(path)
    if future is None:
        result = replay_file(path, cwd=REPO, timeout=EXPECT_TIMEOUT_S)
    else:
        result = future.result()
    assert result.passed, result.report()
