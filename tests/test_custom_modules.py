"""The operator's own dspy.Module classes (`--modules`), on real workers: created by
name with constructor arguments as data, run under the session's LM, exported from one
worker and imported into another; nothing else can be named."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import WorkerProcess

TESTS = Path(__file__).resolve().parent
TYPE = "custom_programs.qa:DraftThenPolish"


def custom_worker(spawn: Callable[..., WorkerProcess], *flags: str) -> WorkerProcess:
    return spawn("--modules", "custom_programs.qa", *flags, env={"PYTHONPATH": str(TESTS)})


def configured(worker: WorkerProcess, sid: str) -> None:
    worker.call("configure_lm", {"session_id": sid, "model": "mock/session", "responses": {
        "What is DSPy?": {"draft": "a framework"},
        "a framework": {"answer": "DSPy is a framework."}}})


def test_a_custom_two_predictor_module_runs_under_the_session_lm(
    spawn: Callable[..., WorkerProcess],
) -> None:
    worker = custom_worker(spawn)
    configured(worker, "c")
    created = worker.call("create_program", {"session_id": "c", "program_id": "mine",
                                             "program_type": TYPE,
                                             "signature": "question -> answer",
                                             "init": {"style": "formal"}})
    assert created["program_type"] == TYPE and created["options"] == {"init": {"style": "formal"}}
    result = worker.call("execute_program", {"session_id": "c", "program_id": "mine",
                                             "inputs": {"question": "What is DSPy?"}})
    assert result["outputs"] == {"answer": "DSPy is a framework."}
    assert (result["lm"], result["lm_source"]) == ("mock/session", "session")
    assert result["usage"]["requests"] == 2  # both predictors, counted
    program = worker.call("get_program", {"session_id": "c", "program_id": "mine"})
    assert program["program_type"] == TYPE


def test_a_custom_module_moves_between_workers_with_its_state(
    spawn: Callable[..., WorkerProcess],
) -> None:
    first, second = custom_worker(spawn), custom_worker(spawn)
    for worker in (first, second):
        configured(worker, "m")
    first.call("create_program", {"session_id": "m", "program_id": "mine", "program_type": TYPE,
                                  "signature": "question -> answer", "init": {"style": "plain"}})
    first.call("compile_program", {"session_id": "m", "program_id": "mine",
                                   "optimizer": "labeled_few_shot", "options": {"k": 1},
                                   "trainset": [{"question": "q", "answer": "a"}],
                                   "metric": "exact_match"})
    document = first.call("export_program", {"session_id": "m", "program_id": "mine"})[
        "document"]
    assert document["program_type"] == TYPE and document["options"] == {"init": {"style": "plain"}}
    assert set(document["state"]) == {"draft", "polish"}
    assert document["state"]["draft"]["demos"]  # the compiled demos travel
    second.call("import_program", {"session_id": "m", "document": document})
    outputs = [w.call("execute_program", {"session_id": "m", "program_id": "mine",
                                          "inputs": {"question": "What is DSPy?"}})["outputs"]
               for w in (first, second)]
    assert outputs[0] == outputs[1] == {"answer": "DSPy is a framework."}


def test_a_module_with_its_own_async_path(spawn: Callable[..., WorkerProcess]) -> None:
    worker = custom_worker(spawn)
    worker.call("configure_lm", {"session_id": "a", "model": "mock", "default": "hi"})
    worker.call("create_program", {"session_id": "a", "program_id": "echo",
                                   "program_type": "custom_programs.qa:AsyncEcho",
                                   "signature": "text -> echo"})
    result = worker.call("execute_program", {"session_id": "a", "program_id": "echo",
                                             "inputs": {"text": "hello"}})
    assert result["outputs"] == {"echo": "hi"}


def names_field(response: dict[str, Any], field: str) -> bool:
    return response["error"]["type"] == "invalid_args" and any(
        e["field"] == field for e in response["error"]["details"]["errors"])


def test_only_the_listed_modules_classes_can_be_named(
    spawn: Callable[..., WorkerProcess],
) -> None:
    worker = custom_worker(spawn)
    configured(worker, "n")
    base = {"session_id": "n", "signature": "question -> answer"}
    for name in ("custom_programs.qa:Predict", "os:system", "dspy:Predict",
                 "custom_programs.qa:Missing", "builtins:eval"):
        response = worker.request("create_program", {**base, "program_type": name})
        assert names_field(response, "program_type"), (name, response)
    assert names_field(worker.request("create_program", {
        **base, "program_type": TYPE, "init": {"style": "loud"}}), "init")
    assert names_field(worker.request("create_program", {
        **base, "program_type": TYPE, "init": {"colour": "red"}}), "init")
    assert worker.call("list_programs", {"session_id": "n"})["programs"] == []
    assert names_field(worker.request("create_program", {
        **base, "program_type": TYPE, "init": {}, "options": {"init": {}}}), "init")
    plain = spawn()  # without --modules nothing custom exists
    response = plain.request("create_program", {**base, "program_type": TYPE})
    assert names_field(response, "program_type")


def test_a_listed_module_that_cannot_be_imported_fails_the_engine(
    spawn: Callable[..., WorkerProcess],
) -> None:
    worker = spawn("--modules", "no_such_module_anywhere")
    event = worker.next_event("engine_failed", timeout=120)
    assert "no_such_module_anywhere" in event["error"]["message"]
    assert worker.call("ping")["engine"] == "failed"


def test_an_operators_signature_class_registers_as_a_named_signature(
    spawn: Callable[..., WorkerProcess],
) -> None:
    worker = custom_worker(spawn)
    named = worker.call("register_signature", {"name": "BasicQA", "signature": {
        "class": "custom_programs.qa:BasicQA"}})
    signature = named["signature"]
    assert signature["instructions"] == "Answer questions with short factoid answers."
    assert [(f["name"], f["type"], f["desc"]) for f in signature["inputs"]] == [
        ("question", "str", None), ("context", "Optional[list[str]]", "may be empty")]
    assert [(f["name"], f["type"]) for f in signature["outputs"]] == [
        ("answer", "str"), ("confidence", 'Literal["low", "high"]')]
    worker.call("configure_lm", {"session_id": "s", "model": "mock",
                                 "default": {"answer": "Paris", "confidence": "high"}})
    worker.call("create_program", {"session_id": "s", "program_id": "qa",
                                   "signature": {"ref": "BasicQA"}})
    result = worker.call("execute_program", {"session_id": "s", "program_id": "qa",
                                             "inputs": {"question": "capital?",
                                                        "context": None}})
    assert result["outputs"] == {"answer": "Paris", "confidence": "high"}
    for name, field in (("custom_programs.qa:Unwireable", "signature.class"),
                        ("custom_programs.qa:DraftThenPolish", "signature.class"),
                        ("os:path", "signature.class")):
        response = worker.request("register_signature", {"name": "X",
                                                         "signature": {"class": name}})
        assert names_field(response, field), response
