"""evaluate_program against a real worker and its mock LM: scores by each metric, failed and
timed-out examples reported without failing the evaluation, progress, and bad input."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import WorkerProcess

ANSWERS = {"capital of France?": "Paris", "capital of Italy?": "The Rome",
           "capital of Spain?": "Madrid, Spain", "capital of Peru?": "Quito"}
DEVSET = [{"question": q, "answer": a} for q, a in [
    ("capital of France?", "paris"),       # exact after normalization
    ("capital of Italy?", "Rome"),         # exact: articles are dropped
    ("capital of Spain?", "Madrid"),       # contained, not exact; f1 2/3
    ("capital of Peru?", "Lima"),          # wrong
]]


def set_up(worker: WorkerProcess, **mock: Any) -> None:
    worker.call("configure_lm", {"session_id": "ev", "model": "mock", "num_retries": 0,
                                 "extra": {"responses": ANSWERS, **mock}}, timeout_ms=60_000)
    worker.call("create_program", {"session_id": "ev", "program_id": "qa",
                                   "signature": "question -> answer"})


def evaluate(worker: WorkerProcess, **args: Any) -> Any:
    return worker.call("evaluate_program", {"session_id": "ev", "program_id": "qa",
                                            "devset": DEVSET, **args}, timeout_ms=60_000)


@pytest.mark.parametrize(("metric", "score", "passed"), [
    ("exact_match", 0.5, 2),
    ("contains", 0.75, 3),
    ({"name": "f1"}, (1 + 1 + 2 / 3 + 0) / 4, 3),          # f1 passes from 0.5
    ({"name": "f1", "threshold": 0.9}, (1 + 1 + 2 / 3 + 0) / 4, 2),
])
def test_each_metric_scores_the_devset(worker: WorkerProcess, metric: Any, score: float,
                                       passed: int) -> None:
    set_up(worker)
    result = evaluate(worker, metric=metric, per_example=True)
    assert result["total"] == 4 and result["passed"] == passed
    assert result["score"] == pytest.approx(score, abs=1e-6)
    assert [e["index"] for e in result["per_example"]] == [0, 1, 2, 3]
    assert result["per_example"][0]["outputs"] == {"answer": "Paris"}
    assert {e["index"] for e in result["failed_examples"]} == {
        e["index"] for e in result["per_example"] if not e["passed"]}
    assert result["lm"] == "mock" and result["usage"]["requests"] == 4


def test_expected_alternatives_take_the_best(worker: WorkerProcess) -> None:
    set_up(worker)
    devset = [{"question": "capital of Peru?", "answer": ["Lima", "quito"]}]
    result = worker.call("evaluate_program", {"session_id": "ev", "program_id": "qa",
                                              "devset": devset, "metric": "exact_match"})
    assert (result["score"], result["passed"]) == (1.0, 1)


def test_json_field_compares_a_path_of_structured_outputs(worker: WorkerProcess) -> None:
    worker.call("configure_lm", {"session_id": "ev", "model": "mock", "extra": {
        "responses": {"a": {"info": {"city": "Paris", "rank": 1}},
                      "b": {"info": {"city": "Rome", "rank": 9}}}}}, timeout_ms=60_000)
    worker.call("create_program", {"session_id": "ev", "program_id": "qa",
                                   "signature": "q -> info: dict"})
    devset = [{"q": "a", "info": {"city": "Paris", "rank": 2}},
              {"q": "b", "info": {"city": "Lima"}}]
    result = worker.call("evaluate_program", {
        "session_id": "ev", "program_id": "qa", "devset": devset,
        "metric": {"name": "json_field", "path": "city"}, "per_example": True})
    assert [e["score"] for e in result["per_example"]] == [1.0, 0.0]


def test_examples_over_their_timeout_fail_with_their_error(worker: WorkerProcess) -> None:
    set_up(worker, latency_ms=2_000)
    result = worker.call("evaluate_program", {
        "session_id": "ev", "program_id": "qa", "devset": DEVSET[:2],
        "metric": "exact_match", "example_timeout_ms": 50, "max_concurrency": 2,
    }, timeout_ms=60_000)
    assert result["total"] == 2 and result["passed"] == 0 and result["score"] == 0.0
    errors = [e["error"]["type"] for e in result["failed_examples"]]
    assert errors == ["timeout", "timeout"]


def test_a_provider_failure_is_one_failed_example(worker: WorkerProcess) -> None:
    set_up(worker, fail=1)  # the first call fails, the others answer
    result = evaluate(worker, metric="exact_match", max_concurrency=1)
    assert result["total"] == 4
    [failed_call] = [e for e in result["failed_examples"] if "error" in e]
    assert failed_call["error"]["type"] == "lm_error"


def test_progress_events_count_up_to_the_total(worker: WorkerProcess) -> None:
    set_up(worker)
    request_id = worker.start("evaluate_program", {"session_id": "ev", "program_id": "qa",
                                                   "devset": DEVSET * 5, "metric": "contains"})
    assert worker.response(request_id, timeout=60)["success"]
    progress = [e for e in worker.events if e["event"] == "progress"
                and e.get("request_id") == request_id]
    assert progress and progress[-1]["done"] == progress[-1]["total"] == 20
    assert [e["done"] for e in progress] == sorted(e["done"] for e in progress)
    assert progress[-1]["stage"] == "evaluate" and progress[-1]["score"] == 0.75


@pytest.mark.parametrize(("args", "field"), [
    ({"metric": "bleu"}, "metric.name"),
    ({"metric": {"name": "f1", "threshold": 2}}, "metric.threshold"),
    ({"metric": {"name": "contains", "field": "nope"}}, "metric.field"),
    ({"metric": {"name": "exact_match", "typo": 1}}, "metric.typo"),
    ({"metric": "exact_match", "devset": [{"question": "q"}]}, "devset.0.answer"),
    ({"metric": "exact_match", "devset": [{"answer": "a"}]}, "devset.0.question"),
    ({"metric": "exact_match", "devset": [{"question": 3, "answer": "a"}]}, "devset.0.question"),
    ({"metric": "exact_match", "devset": [{"question": "q", "answer": "a", "x": 1}]},
     "devset.0.x"),
    ({"metric": "exact_match", "devset": []}, "devset"),
    ({"metric": "exact_match", "max_concurrency": 0}, "max_concurrency"),
])
def test_bad_evaluations_are_invalid_args_naming_the_field(
    worker: WorkerProcess, args: dict[str, Any], field: str
) -> None:
    set_up(worker)
    request = {"session_id": "ev", "program_id": "qa", "devset": DEVSET, **args}
    error = worker.request("evaluate_program", request)["error"]
    assert error["type"] == "invalid_args", error
    assert field in [e["field"] for e in error["details"]["errors"]], error
