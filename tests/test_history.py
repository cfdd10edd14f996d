"""get_history: a session's last LM calls, bounded, on real workers and the mock LM."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.engine_support import RecordingWorker


@pytest.fixture
def worker() -> Iterator[RecordingWorker]:
    process = RecordingWorker()
    yield process
    process.close()


def test_history_shows_the_sessions_last_calls(worker: RecordingWorker) -> None:
    worker.ok("configure_lm", {"session_id": "h", "model": "mock/h", "default": "x"})
    worker.ok("create_program", {"session_id": "h", "program_id": "qa",
                                 "signature": "question -> answer"})
    for question in ("first?", "second?", "third?"):
        worker.ok("execute_program", {"session_id": "h", "program_id": "qa",
                                      "inputs": {"question": question}})
    history = worker.ok("get_history", {"session_id": "h", "n": 2})
    assert history["session_id"] == "h" and history["recorded"] == 3
    older, newer = history["entries"]
    assert "second?" in older["messages"][-1]["content"]
    assert "third?" in newer["messages"][-1]["content"]
    assert newer["model"] == "mock/h" and newer["messages"][0]["role"] == "system"
    assert newer["outputs"] == ["[[ ## answer ## ]]\nx\n\n[[ ## completed ## ]]"]
    assert newer["usage"]["prompt_tokens"] > 0 and newer["timestamp"]
    # Other sessions see none of it.
    assert worker.ok("get_history", {"session_id": "other"}) == {
        "session_id": "other", "entries": [], "recorded": 0}


def test_history_is_bounded_in_count_and_text(worker: RecordingWorker) -> None:
    worker.ok("configure_lm", {"session_id": "b", "model": "mock", "default": "y",
                               "cache": False})
    worker.ok("create_program", {"session_id": "b", "program_id": "qa",
                                 "signature": "question -> answer"})
    result = worker.ok("execute_batch", {"session_id": "b", "program_id": "qa",
                                         "inputs": [{"question": f"q{i} " + "long " * 1500}
                                                    for i in range(105)]})
    assert result["succeeded"] == 105
    history = worker.ok("get_history", {"session_id": "b", "n": 100})
    assert history["recorded"] == 105 and len(history["entries"]) == 100
    text = history["entries"][-1]["messages"][-1]["content"]
    assert len(text) < 4100 and text.endswith("more chars]")
    assert "n" in worker.invalid_fields("get_history", {"session_id": "b", "n": 101})
    assert "n" in worker.invalid_fields("get_history", {"session_id": "b", "n": 0})
