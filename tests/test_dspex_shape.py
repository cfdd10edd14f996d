"""The DSPex-compatible form on the wire (PROTOCOL.md "The DSPex form"): `provider` +
`model`, `lm_config` for `lm`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.engine_support import RecordingWorker


@pytest.fixture
def worker() -> Iterator[RecordingWorker]:
    process = RecordingWorker()
    yield process
    process.close()


def test_provider_and_model_make_dspys_model_string(worker: RecordingWorker) -> None:
    configured = worker.ok("configure_lm", {"session_id": "dx", "provider": "mock",
                                            "model": "seed", "temperature": 0.7,
                                            "default": "from the session"})
    assert configured["lm"]["model"] == "mock/seed"
    worker.ok("create_program", {"session_id": "dx", "program_id": "qa",
                                 "signature": "question -> answer",
                                 "lm_config": {"provider": "mock", "model": "program",
                                               "default": "from the program"}})
    result = worker.ok("execute_program", {"session_id": "dx", "program_id": "qa",
                                           "inputs": {"question": "q"}})
    assert (result["lm"], result["lm_source"]) == ("mock/program", "program")
    result = worker.ok("execute_program", {
        "session_id": "dx", "program_id": "qa", "inputs": {"question": "q"},
        "lm_config": {"provider": "mock", "model": "call", "default": "from the call"}})
    assert (result["lm"], result["outputs"]) == ("mock/call", {"answer": "from the call"})


@pytest.mark.parametrize(("config", "field"), [
    ({"provider": "mock", "model": "a/b"}, "model"),
    ({"provider": "bad provider!", "model": "x"}, "provider"),
    ({"provider": 5, "model": "x"}, "provider"),
])
def test_a_bad_provider_form_is_invalid_args(worker: RecordingWorker, config: dict[str, object],
                                             field: str) -> None:
    error = worker.error("configure_lm", {"session_id": "bad", **config}, "invalid_args")
    assert field in error["message"]


def test_lm_and_lm_config_are_one_argument(worker: RecordingWorker) -> None:
    worker.ok("configure_lm", {"session_id": "both", "model": "mock"})
    worker.ok("create_program", {"session_id": "both", "program_id": "qa",
                                 "signature": "question -> answer"})
    worker.error("execute_program", {"session_id": "both", "program_id": "qa",
                                     "inputs": {"question": "q"}, "lm": "mock/a",
                                     "lm_config": "mock/b"}, "invalid_args")


def test_the_seeds_signature_form_is_taken(worker: RecordingWorker) -> None:
    worker.ok("configure_lm", {"session_id": "sig", "provider": "mock", "model": "seed",
                               "default": "Paris"})
    created = worker.ok("create_program", {"session_id": "sig", "program_id": "qa",
                                           "signature": {
        "name": "BasicQA", "docstring": "Answer questions with short factoid answers.",
        "inputs": [{"name": "question", "type": "string"}],
        "outputs": [{"name": "answer", "type": "string",
                     "desc": "often between 1 and 5 words"}]}})
    assert created["signature"]["instructions"] == "Answer questions with short factoid answers."
    assert [f["type"] for f in created["signature"]["outputs"]] == ["str"]
    program = worker.ok("get_program", {"session_id": "sig", "program_id": "qa"})
    assert program["instructions"] == "Answer questions with short factoid answers."
    result = worker.ok("execute_program", {"session_id": "sig", "program_id": "qa",
                                           "inputs": {"question": "capital of France?"}})
    assert result["outputs"] == {"answer": "Paris"}
    for kind, wire in (("integer", "int"), ("number", "float"), ("boolean", "bool")):
        spec = worker.ok("create_program", {"session_id": "sig", "signature": {
            "inputs": [{"name": "q", "type": kind}], "outputs": [{"name": "a"}]}})
        assert spec["signature"]["inputs"][0]["type"] == wire
    assert worker.invalid_fields("create_program", {"session_id": "sig", "signature": {
        "docstring": "a", "instructions": "b", "outputs": [{"name": "a"}]}})
