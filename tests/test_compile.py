"""compile_program on real workers: every optimizer against the mock LM on a trainset
built so that demos (or instructions) matter, progress events, storing and moving the
compiled program, stopping a run with its request, and resuming from a checkpoint after
a kill -9."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import WorkerProcess
from tests.engine_support import RecordingWorker
from tests.fake_openai_server import fake_openai
from tests.host_support import Host

TRAIN = [{"question": f"q{i}", "answer": f"A{i}"} for i in range(8)]
KNOWING = "Answer with A and the question's number."


def knowing_lm(args: Any) -> Any:
    """A model that knows the task once it was shown an example or told how: what makes
    demos and instructions matter."""
    question = args["inputs"].get("question", "")
    if "answer" not in args["outputs"]:
        return None  # a proposer's or reflector's own prompt: placeholders will do
    if args["demos"] > 0 or "number" in args["instructions"]:
        return {"answer": "A" + question[1:]}
    return {"answer": "I do not know."}


@pytest.fixture
def worker() -> Iterator[RecordingWorker]:
    process = RecordingWorker()
    yield process
    process.close()


def session(worker: WorkerProcess, sid: str, **lm: Any) -> None:
    worker.call("register_tools", {"session_id": sid, "tools": [{"name": "model"}]})
    worker.call("configure_lm", {"session_id": sid, "model": "mock", "generator": "model",
                                 **lm})
    worker.call("create_program", {"session_id": sid, "program_id": "qa",
                                   "signature": "question -> answer"})


def compile_args(sid: str, optimizer: str, **more: Any) -> dict[str, Any]:
    return {"session_id": sid, "program_id": "qa", "optimizer": optimizer,
            "trainset": TRAIN, "valset": TRAIN, "metric": "exact_match", **more}


OPTIMIZERS = [
    ("labeled_few_shot", {"k": 4}, "demos"),
    ("bootstrap_few_shot", {"max_bootstrapped_demos": 2, "max_labeled_demos": 2}, "demos"),
    ("bootstrap_few_shot_with_random_search",
     {"num_candidate_programs": 2, "num_threads": 2}, "demos"),
    ("mipro_v2", {"auto": "light", "num_threads": 2,
                  "prompt_lm": {"model": "mock/proposer", "default": KNOWING}}, "either"),
    ("gepa", {"max_metric_calls": 40, "num_threads": 2,
              "reflection_lm": {"model": "mock/reflector", "default": f"```\n{KNOWING}\n```"}},
     "instructions"),
]


@pytest.mark.parametrize(("optimizer", "options", "changes"), OPTIMIZERS,
                         ids=[name for name, _, _ in OPTIMIZERS])
def test_each_optimizer_improves_the_program(worker: RecordingWorker, optimizer: str,
                                             options: dict[str, Any], changes: str) -> None:
    session(worker, "c")
    host = Host(worker, {"model": knowing_lm})
    before = worker.ok("get_program", {"session_id": "c", "program_id": "qa"})
    response = host.run("compile_program", compile_args(
        "c", optimizer, options=options, target_program_id="better"), timeout_ms=300_000)
    assert response["success"], response
    result = response["result"]
    assert result["program_id"] == "better" and result["optimizer"] == optimizer
    assert result["score_before"] == 0.0 and result["score_after"] == 1.0
    assert result["metric_calls"] > 0
    demos_changed = result["demos"] > 0
    instructions_changed = result["instructions"] != before["instructions"]
    assert {"demos": demos_changed, "instructions": instructions_changed,
            "either": demos_changed or instructions_changed}[changes], result
    # The compiled program answers what the original could not; the original is intact.
    answers = {program: host.run("execute_program", {
        "session_id": "c", "program_id": program, "inputs": {"question": "q42"}})
        for program in ("qa", "better")}
    assert answers["qa"]["result"]["outputs"] == {"answer": "I do not know."}
    assert answers["better"]["result"]["outputs"] == {"answer": "A42"}


def test_simba_improves_the_program_from_the_spread_between_runs(
    worker: RecordingWorker,
) -> None:
    # SIMBA learns from runs of one example that score apart: this model is right on
    # every second try at a question until it is shown a demo, then always.
    session(worker, "simba")
    tries: Counter[str] = Counter()
    lock = threading.Lock()

    def uneven(args: Any) -> Any:
        if "answer" not in args["outputs"]:
            return None
        question = args["inputs"].get("question", "")
        with lock:
            tries[question] += 1
            second = tries[question] % 2 == 0
        knows = args["demos"] > 0 or second
        return {"answer": "A" + question[1:] if knows else "I do not know."}

    response = Host(worker, {"model": uneven}).run("compile_program", compile_args(
        "simba", "simba", target_program_id="better",
        options={"bsize": 4, "num_candidates": 3, "max_steps": 3, "num_threads": 2}))
    assert response["success"], response
    result = response["result"]
    assert (result["score_before"], result["score_after"]) == (0.0, 1.0)
    assert result["demos"] > 0


def test_progress_arrives_in_order_and_at_a_bounded_rate(worker: RecordingWorker) -> None:
    session(worker, "progress", latency_ms=40)
    host = Host(worker, {"model": knowing_lm})
    started = time.monotonic()
    request_id = worker.start("compile_program", compile_args(
        "progress", "bootstrap_few_shot", options={"max_bootstrapped_demos": 8}))
    response = host.until(request_id, timeout=120)
    elapsed = time.monotonic() - started
    assert response["success"], response
    events = [e for e in worker.events
              if e["event"] == "progress" and e["request_id"] == request_id]
    assert len(events) >= 3
    done = [e["done"] for e in events]
    assert done == sorted(done) and all(e["stage"] == "compile" for e in events)
    assert all(e["done"] <= e["total"] for e in events)
    assert events[-1]["done"] == events[-1]["total"] == response["result"]["metric_calls"]
    assert len(events) <= elapsed / 0.25 + 2  # at most about four a second


def test_the_compiled_program_replaces_the_original_and_travels(
    spawn: Callable[..., WorkerProcess],
) -> None:
    first = spawn()
    session(first, "move")
    host = Host(first, {"model": knowing_lm})
    response = host.run("compile_program", compile_args(
        "move", "labeled_few_shot", options={"k": 3}))
    assert response["result"]["program_id"] == "qa" and response["result"]["demos"] == 3
    document = first.call("export_program", {"session_id": "move", "program_id": "qa"})[
        "document"]
    assert len(document["state"]["demos"]) == 3
    second = spawn()
    session(second, "move")
    second.call("delete_program", {"session_id": "move", "program_id": "qa"})
    second.call("import_program", {"session_id": "move", "document": document})
    outputs = [Host(w, {"model": knowing_lm}).run("execute_program", {
        "session_id": "move", "program_id": "qa", "inputs": {"question": "q7"}})[
            "result"]["outputs"] for w in (first, second)]
    assert outputs == [{"answer": "A7"}, {"answer": "A7"}]


def test_include_document_answers_with_what_export_program_gives(
    worker: RecordingWorker,
) -> None:
    """The compile's own reply can carry the compiled program's document (for a host to
    record it from the worker that compiled it); without the flag there is none."""
    session(worker, "doc")
    host = Host(worker, {"model": knowing_lm})
    plain = host.run("compile_program", compile_args("doc", "labeled_few_shot",
                                                     options={"k": 2}))["result"]
    assert "document" not in plain
    result = host.run("compile_program", {**compile_args(
        "doc", "labeled_few_shot", options={"k": 3}), "include_document": True})["result"]
    exported = worker.call("export_program", {"session_id": "doc", "program_id": "qa"})
    assert result["document"] == exported["document"]
    assert len(result["document"]["state"]["demos"]) == 3 == result["demos"]


@pytest.mark.parametrize(("change", "field"), [
    ({"optimizer": "adam"}, "optimizer"),
    ({"options": {"k": 0}}, "options.k"),
    ({"options": {"bogus": 1}}, "options.bogus"),
    ({"optimizer": "gepa", "options": {"reflection_lm": {"model": "mock"},
                                       "auto": "light", "max_metric_calls": 5}},
     "options.auto"),
    ({"optimizer": "gepa", "options": {"auto": "light"}}, "options.reflection_lm"),
    ({"optimizer": "mipro_v2", "options": {"auto": "huge"}}, "options.auto"),
    ({"optimizer": "simba", "options": {"bsize": 100}}, "options.bsize"),
    ({"metric": "bleu"}, "metric.name"),
    ({"metric": {"name": "host", "function": "nope"}}, "metric.function"),
    ({"trainset": [{"question": 5, "answer": "x"}]}, "trainset.0.question"),
    ({"trainset": [{"question": "q"}]}, "trainset.0.answer"),
    ({"trainset": [{"question": "q", "answer": "a", "extra": 1}]}, "trainset.0.extra"),
    ({"valset": [{"answer": "a"}]}, "valset.0.question"),
    ({"trainset": []}, "trainset"),
    ({"checkpoint": {"id": "ok"}}, "checkpoint"),
    ({"checkpoint": {"id": "../up"}}, "checkpoint.id"),
    ({"include_document": "yes"}, "include_document"),
])
def test_bad_compiles_name_what_is_wrong(worker: RecordingWorker, change: dict[str, Any],
                                         field: str) -> None:
    session(worker, "bad")
    args = {**compile_args("bad", "labeled_few_shot"), **change}
    assert field in worker.invalid_fields("compile_program", args)


def test_a_compile_into_a_taken_id_or_from_nothing_is_refused(
    worker: RecordingWorker,
) -> None:
    session(worker, "ids")
    worker.ok("create_program", {"session_id": "ids", "program_id": "taken",
                                 "signature": "question -> answer"})
    worker.error("compile_program", compile_args("ids", "labeled_few_shot",
                                                 target_program_id="taken"), "already_exists")
    worker.error("compile_program", {**compile_args("ids", "labeled_few_shot"),
                                     "program_id": "missing"}, "not_found")


def test_cancel_stops_the_runs_lm_calls(spawn: Callable[..., WorkerProcess]) -> None:
    with fake_openai() as server:
        worker = spawn()
        for _ in range(200):
            server.delay_next(0.05)
        worker.call("configure_lm", {"session_id": "stop", "model": "openai/fake",
                                     "api_base": server.base_url, "api_key": "sk-fake",
                                     "num_retries": 0, "cache": False})
        worker.call("create_program", {"session_id": "stop", "program_id": "qa",
                                       "signature": "question -> answer"})
        request_id = worker.start("compile_program", {
            **compile_args("stop", "bootstrap_few_shot"),
            "trainset": [{"question": f"q{i}", "answer": "x"} for i in range(150)],
            "options": {"max_bootstrapped_demos": 100}})
        _wait_for(lambda: len(server.requests) >= 3, "the compile's first LM calls")
        assert worker.call("cancel", {"request_id": request_id}) == {"cancelled": True}
        assert worker.response(request_id)["error"]["type"] == "cancelled"
        _wait_for(lambda: '"thread_stopped"' in worker.stderr_text(), "the thread to stop")
        calls = len(server.requests)
        assert calls < 20  # stopped long before the 150 examples
        assert worker.call("ping")["status"] == "ok"
        worker.call("shutdown", {"grace_ms": 0})
        worker.wait_exit(30)
        assert len(server.requests) == calls  # none after the thread ended


def test_a_checkpoint_resumes_a_killed_compile(spawn: Callable[..., WorkerProcess],
                                               tmp_path: Path) -> None:
    trainset = [{"question": f"q{i}", "answer": f"A{i}"} for i in range(30)]
    answers = {f"q{i}": f"A{i}" for i in range(30)}
    args = {"session_id": "ckpt", "program_id": "qa", "optimizer": "bootstrap_few_shot",
            "trainset": trainset, "metric": "exact_match", "checkpoint": {"id": "run-1"},
            "options": {"max_bootstrapped_demos": 30, "max_labeled_demos": 0}}

    def prepared() -> WorkerProcess:
        worker = spawn("--checkpoint-dir", str(tmp_path))
        worker.call("configure_lm", {"session_id": "ckpt", "model": "mock/ckpt",
                                     "responses": answers, "latency_ms": 60})
        worker.call("create_program", {"session_id": "ckpt", "program_id": "qa",
                                       "signature": "question -> answer"})
        return worker

    first = prepared()
    request_id = first.start("compile_program", args)
    while True:  # until half the work is done and kept
        event = first.next_event("progress", timeout=120)
        if event["request_id"] == request_id and event["done"] >= 16:
            break
    os.kill(first.pid, signal.SIGKILL)
    first.wait_exit(30)

    second = prepared()
    result = second.call("compile_program", args)
    usage = result["usage"]["mock/ckpt"]
    assert result["demos"] == 30
    redone = usage["requests"] - usage["cached_requests"]
    assert usage["cached_requests"] >= 16
    assert redone < 15  # less than half of the 30 calls made again


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
