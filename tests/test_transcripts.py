"""Every transcript in tests/transcripts/ replayed against a fresh worker, one case each."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.replay import replay_file

TRANSCRIPTS = Path(__file__).parent / "transcripts"
FILES = sorted(TRANSCRIPTS.glob("*.jsonl"))


def test_the_suite_is_big_enough() -> None:
    assert len(FILES) >= 20


@pytest.mark.parametrize("path", FILES, ids=[path.stem for path in FILES])
def test_transcript(path: Path) -> None:
    result = replay_file(path)
    assert result.passed, result.report()
