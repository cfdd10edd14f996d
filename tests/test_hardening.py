"""Hardening: bad requests, hostile hosts and providers never break a worker or a tenant."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.test_worker import assert_error, assert_serving

# ----- the engine load is a state, never cancelled by a request that waited for it -----


@pytest.mark.parametrize("how", ["timeout", "cancel"])
def test_giving_up_on_a_request_waiting_for_dspy_never_breaks_the_engine(
    spawn: Any, how: str
) -> None:
    worker = spawn()
    assert worker.call("ping")["engine"] == "loading"  # the request below must wait for DSPy
    if how == "timeout":
        gave_up = worker.request("configure_lm", {"model": "mock"}, timeout_ms=1)
        assert_error(gave_up, "timeout")
    else:
        waiting = worker.start("configure_lm", {"model": "mock"})
        cancel = worker.call("cancel", {"request_id": waiting})
        assert cancel == {"cancelled": True}
        assert_error(worker.response(waiting), "cancelled")
    assert_serving(worker)
    assert worker.call("configure_lm", {"model": "mock"})["scope"] == "worker"
    assert worker.call("ping")["engine"] == "ready"


def test_an_engine_that_fails_to_load_is_a_typed_state(spawn: Any, tmp_path: Path) -> None:
    broken = tmp_path / "dspy"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise ImportError('broken dspy for the test')\n")
    worker = spawn(env={"PYTHONPATH": str(tmp_path)})
    event = worker.next_event("engine_failed")
    assert event["error"]["type"] == "engine_unavailable"
    assert "broken dspy for the test" in event["error"]["message"]
    ping = worker.call("ping")
    assert (ping["status"], ping["engine"]) == ("engine_failed", "failed")
    assert ping["dspy_loaded"] is False
    for command, args in [
        ("configure_lm", {"model": "mock"}),
        ("create_program", {"signature": "q -> a"}),
        ("configure_cache", {}),
    ]:
        error = assert_error(worker.request(command, args), "engine_unavailable")
        assert error["retryable"] is True
    assert worker.call("get_stats")["engine"] == "failed"
