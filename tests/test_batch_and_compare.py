"""execute_batch and the multi_chain_comparison program type, on real workers and the
mock LM."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.engine_support import RecordingWorker


@pytest.fixture
def worker() -> Iterator[RecordingWorker]:
    process = RecordingWorker()
    yield process
    process.close()


def qa(worker: RecordingWorker, sid: str, **lm: object) -> None:
    worker.ok("configure_lm", {"session_id": sid, "model": "mock", **lm})
    worker.ok("create_program", {"session_id": sid, "program_id": "qa",
                                 "signature": "question -> answer, length: int"})


def test_a_batch_answers_every_item_in_order_with_bad_items_in_place(
    worker: RecordingWorker,
) -> None:
    qa(worker, "b", responses={f"q{i}": {"answer": f"a{i}", "length": i} for i in range(100)})
    inputs: list[object] = [{"question": f"q{i}"} for i in range(100)]
    inputs[7] = {"question": 7}  # wrong type
    inputs[42] = {}  # missing field
    inputs[99] = "not a map"
    result = worker.ok("execute_batch", {"session_id": "b", "program_id": "qa",
                                         "inputs": inputs, "max_concurrency": 16})
    assert result["succeeded"] == 97 and result["failed"] == 3
    results = result["results"]
    assert len(results) == 100
    for index, item in enumerate(results):
        if index in (7, 42, 99):
            assert item["error"]["type"] == "invalid_args"
            assert item["error"]["details"]["errors"][0]["field"].startswith(f"inputs.{index}")
        else:
            assert item == {"outputs": {"answer": f"a{index}", "length": index}}
    assert result["usage"]["requests"] == 97
    assert worker.ok("get_usage", {"session_id": "b"})["models"]["mock"]["requests"] == 97


def test_a_failing_item_fails_alone(worker: RecordingWorker) -> None:
    qa(worker, "f", fail={"times": 1, "error": "auth"}, num_retries=0, cache=False,
       default={"answer": "ok", "length": 2})
    result = worker.ok("execute_batch", {"session_id": "f", "program_id": "qa",
                                         "inputs": [{"question": "x"}, {"question": "y"}],
                                         "max_concurrency": 1})
    assert [sorted(item) for item in result["results"]] == [["error"], ["outputs"]]
    assert result["results"][0]["error"]["type"] == "lm_error"


def test_a_batch_is_bounded_and_stopped_as_a_whole(worker: RecordingWorker) -> None:
    qa(worker, "t", latency_ms=60_000, default="slow")
    args = {"session_id": "t", "program_id": "qa",
            "inputs": [{"question": f"q{i}"} for i in range(10)]}
    assert worker.error("execute_batch", args, "timeout", timeout_ms=300)["retryable"]
    request_id = worker.start("execute_batch", args)
    assert worker.ok("cancel", {"request_id": request_id}) == {"cancelled": True}
    assert worker.response(request_id)["error"]["type"] == "cancelled"
    assert worker.ok("ping")["status"] == "ok"


def test_batch_arguments_are_checked(worker: RecordingWorker) -> None:
    qa(worker, "a", default="x")
    for args, field in [({"inputs": []}, "inputs"), ({"inputs": {}}, "inputs"),
                        ({"max_concurrency": 0}, "max_concurrency")]:
        assert field in worker.invalid_fields("execute_batch", {
            "session_id": "a", "program_id": "qa", "inputs": [{"question": "q"}], **args})
    worker.error("execute_batch", {"session_id": "a", "program_id": "nope",
                                   "inputs": [{"question": "q"}]}, "not_found")


def test_multi_chain_comparison_compares_its_attempts(worker: RecordingWorker) -> None:
    worker.ok("configure_lm", {"session_id": "m", "model": "mock", "cache": False,
                               "sequence": [
        {"reasoning": "Lyon is big.", "answer": "Lyon"},
        {"reasoning": "Paris is the capital.", "answer": "Paris"},
        {"reasoning": "The government sits in Paris.", "answer": "Paris"},
        {"rationale": "Two attempts agree on Paris.", "answer": "Paris"}]})
    created = worker.ok("create_program", {
        "session_id": "m", "program_id": "mcc", "signature": "question -> answer",
        "program_type": "multi_chain_comparison", "options": {"m": 3}})
    assert created["options"] == {"m": 3}
    result = worker.ok("execute_program", {"session_id": "m", "program_id": "mcc",
                                           "inputs": {"question": "capital of France?"}})
    assert result["outputs"] == {"rationale": "Two attempts agree on Paris.", "answer": "Paris"}
    assert result["usage"]["requests"] == 4  # three attempts and the comparison
    document = worker.ok("export_program", {"session_id": "m", "program_id": "mcc"})["document"]
    imported = worker.ok("import_program", {"session_id": "m2", "document": document})
    assert imported["program_type"] == "multi_chain_comparison"


def test_multi_chain_comparison_checks_its_options_and_names(worker: RecordingWorker) -> None:
    base = {"session_id": "mo", "program_type": "multi_chain_comparison"}
    for options, field in [({"m": 1}, "options.m"), ({"m": 11}, "options.m"),
                           ({"bogus": 1}, "options.bogus")]:
        assert field in worker.invalid_fields("create_program", {
            **base, "signature": "question -> answer", "options": options})
    for signature in ("question -> rationale", "question -> reasoning",
                      "completions -> answer"):
        assert "signature" in worker.invalid_fields("create_program", {
            **base, "signature": signature})
