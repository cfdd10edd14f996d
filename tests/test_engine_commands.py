"""The DSPy commands against a real spawned worker: configure_lm, programs, execution,
sessions, usage, export/import, limits — all on the mock provider (no network)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.engine_support import ENV_KEY_NAME, TEST_API_KEY, RecordingWorker, mock_lm


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def worker(home: Path) -> Iterator[RecordingWorker]:
    """One worker shared by the module: every test uses its own session ids."""
    process = RecordingWorker("--max-in-flight", "1024", env={"HOME": str(home)})
    yield process
    process.close()
    process.assert_no_secret_leaked()


# ----- configure_lm -----


def test_configure_lm_answers_settings_with_the_key_redacted(worker: RecordingWorker) -> None:
    result = worker.ok("configure_lm", {
        "session_id": "cfg", "model": "mock/cfg", "api_key": TEST_API_KEY, "temperature": 0.5,
        "top_p": 1, "max_tokens": 64, "timeout_s": 5, "num_retries": 0, "cache": False,
    })
    assert result["scope"] == "session" and result["session_id"] == "cfg"
    lm = result["lm"]
    assert lm["model"] == "mock/cfg" and lm["api_key"] == "<redacted>"
    assert lm["temperature"] == 0.5 and lm["max_tokens"] == 64 and lm["cache"] is False


def test_configure_lm_reads_the_key_from_an_environment_variable(worker: RecordingWorker) -> None:
    result = worker.ok("configure_lm", {"session_id": "cfg-env", "model": "mock",
                                        "api_key_env": ENV_KEY_NAME})
    assert result["lm"]["api_key_env"] == ENV_KEY_NAME
    assert "api_key" not in result["lm"]


def test_configure_lm_makes_no_lm_call(worker: RecordingWorker) -> None:
    # A mock that fails every call still configures fine: nothing was called.
    worker.ok("configure_lm", mock_lm("broken", fail={"error": "auth"}) | {"session_id": "nocall"})
    worker.ok("create_program", {"session_id": "nocall", "program_id": "p", "signature": "a -> b"})
    error = worker.error("execute_program", {"session_id": "nocall", "program_id": "p",
                                             "inputs": {"a": "x"}}, "lm_error")
    assert error["details"]["error_class"] == "LMAuthError"


def test_mock_options_are_also_taken_at_the_top_level(worker: RecordingWorker) -> None:
    result = worker.ok("configure_lm", {"session_id": "top", "model": "mock/top",
                                        "responses": {"hi": "hello"}, "latency_ms": 1})
    assert result["lm"]["extra"] == {"responses": {"hi": "hello"}, "latency_ms": 1}
    assert "responses" not in result["lm"]
    worker.ok("create_program", {"session_id": "top", "program_id": "p", "signature": "q -> a"})
    assert worker.ok("execute_program", {"session_id": "top", "program_id": "p",
                                         "inputs": {"q": "hi"}})["outputs"] == {"a": "hello"}


@pytest.mark.parametrize(("args", "field"), [
    ({"model": "openai/x", "responses": {}}, "responses"),
    ({"model": "mock", "default": "a", "extra": {"default": "b"}}, "extra.default"),
    ({"model": "mock", "fail": {"times": -1}}, "extra.fail.times"),
    ({"model": "mock", "temperature": 2.5}, "temperature"),
    ({"model": "mock", "temperature": -0.1}, "temperature"),
    ({"model": "mock", "top_p": 1.5}, "top_p"),
    ({"model": "mock", "max_tokens": 0}, "max_tokens"),
    ({"model": "mock", "max_tokens": "5"}, "max_tokens"),
    ({"model": "mock", "timeout_s": 0}, "timeout_s"),
    ({"model": "mock", "num_retries": -1}, "num_retries"),
    ({"model": "mock", "colour": "blue"}, "colour"),
    ({"model": ""}, "model"),
    ({"model": "gpt-4o-mini"}, "model"),
    ({"model": "openai/ gpt"}, "model"),
    ({"model": "mock/bad name"}, "model"),
    ({"model": "mock", "api_key": "k1", "api_key_env": ENV_KEY_NAME}, "api_key_env"),
    ({"model": "mock", "api_key_env": "BRIDGE_TEST_UNSET_VARIABLE"}, "api_key_env"),
    ({"model": "mock", "api_key_env": "not a name"}, "api_key_env"),
    ({"model": "mock", "api_base": "http://127.0.0.1:1"}, "api_base"),
    ({"model": "openai/x", "api_base": "ftp://example"}, "api_base"),
    ({"model": "mock", "extra": {"sequense": []}}, "extra.sequense"),
    ({"model": "mock", "extra": {"latency_ms": -1}}, "extra.latency_ms"),
    ({"model": "mock", "extra": {"fail": {"error": "meteor"}}}, "extra.fail.error"),
    ({"model": "openai/x", "extra": {"temperature": 1}}, "extra.temperature"),
    ({"model": "openai/x", "extra": {"engine": "warp"}}, "extra.engine"),
    ({"model": "mock", "circuit_breaker": {"failure_threshold": 0}},
     "circuit_breaker.failure_threshold"),
    ({"model": "mock", "session_id": 5}, "session_id"),
])
def test_configure_lm_validation_names_the_field(
    worker: RecordingWorker, args: dict[str, Any], field: str
) -> None:
    assert field in worker.invalid_fields("configure_lm", args)


# ----- signatures -----


def test_string_signature_with_types_is_normalized(worker: RecordingWorker) -> None:
    result = worker.ok("create_program", {
        "session_id": "sig", "signature": "context: list[str], question -> answer: str, n: int",
    })
    assert result["program_id"].startswith("prog_")
    assert result["signature"]["inputs"] == [
        {"name": "context", "desc": None, "type": "list[str]"},
        {"name": "question", "desc": None, "type": "str"},
    ]
    assert [f["type"] for f in result["signature"]["outputs"]] == ["str", "int"]


def test_structured_signature_with_enum(worker: RecordingWorker) -> None:
    signature = {
        "name": "Classify", "instructions": "Classify the text.",
        "inputs": [{"name": "text", "desc": "the text"}],
        "outputs": [{"name": "label", "type": {"type": "enum", "choices": ["pos", "neg"]}},
                    {"name": "score", "type": "float"}],
    }
    result = worker.ok("create_program", {"session_id": "sig", "program_id": "cls",
                                          "signature": signature})
    assert result["signature"]["outputs"][0]["type"] == {"type": "enum", "choices": ["pos", "neg"]}
    program = worker.ok("get_program", {"session_id": "sig", "program_id": "cls"})
    assert program["instructions"] == "Classify the text."


HOSTILE_SIGNATURES = [
    "q: __import__('os').system('touch /tmp/bridge_pwned') -> a",
    "q -> a: eval('1')",
    "q: list[__import__('os')] -> a",
    "q: int; import os -> a",
    "q: Literal['a'] -> a",
    "q: dict[str, Any] -> a",
    "q: List[str] -> a",
    "q: str] -> a",
    "q: list[str -> a",
    "q: " + "list[" * 500 + "str" + "]" * 500 + " -> a",
    "q: " + "x" * 30_000 + " -> a",
    "q -> a -> b",
    "q, a",
    "q -> ",
    "1q -> a",
    "q.attr -> a",
    "__class__ -> a",
    "q, q -> a",
    "q -> a, a",
    "signature -> a",
    "q -> completed",
    "q -> model_config",
    "lambda -> a",
    "q: \x00 -> a",
]


@pytest.mark.parametrize("signature", HOSTILE_SIGNATURES)
def test_hostile_signature_is_invalid_args(worker: RecordingWorker, signature: str) -> None:
    fields = worker.invalid_fields("create_program", {"session_id": "hostile",
                                                      "signature": signature})
    assert all(f.startswith("signature") for f in fields)
    assert not os.path.exists("/tmp/bridge_pwned")


@pytest.mark.parametrize(("signature", "field"), [
    ({"outputs": []}, "signature.outputs"),
    ({"inputs": [{"name": "q"}]}, "signature.outputs"),
    ({"outputs": [{"name": "a", "type": "tuple"}]}, "signature.outputs.0.type"),
    ({"outputs": [{"name": "a", "type": {"type": "enum", "choices": []}}]},
     "signature.outputs.0.type"),
    ({"outputs": [{"name": "a", "type": {"type": "enum", "choices": ["x", "x"]}}]},
     "signature.outputs.0.type"),
    ({"outputs": [{"name": "a b"}]}, "signature.outputs.0.name"),
    ({"outputs": [{"name": "a", "kind": "x"}]}, "signature.outputs.0.kind"),
    ({"outputs": [{"name": "a"}], "inputs": [{"name": "a"}]}, "signature"),
    ({"outputs": [{"name": "a"}], "extra": 1}, "signature.extra"),
])
def test_structured_signature_validation(
    worker: RecordingWorker, signature: dict[str, Any], field: str
) -> None:
    assert field in worker.invalid_fields("create_program", {"session_id": "hostile",
                                                             "signature": signature})


def test_chain_of_thought_refuses_a_reasoning_field(worker: RecordingWorker) -> None:
    worker.invalid_fields("create_program", {"session_id": "hostile", "signature": "q -> reasoning",
                                             "program_type": "chain_of_thought"})


def test_refused_programs_create_no_session(worker: RecordingWorker) -> None:
    assert worker.ok("list_sessions", {"session_id": "hostile"})["sessions"] == []


# ----- create_program -----


def test_concurrent_creates_of_one_id_give_one_program(worker: RecordingWorker) -> None:
    args = {"session_id": "race", "program_id": "same", "signature": "q -> a",
            "lm": mock_lm("race")}
    ids = [worker.start("create_program", args) for _ in range(5)]
    outcomes = sorted(worker.response(i)["success"] for i in ids)
    assert outcomes == [False, False, False, False, True]


def test_create_program_errors(worker: RecordingWorker) -> None:
    args = {"session_id": "create", "program_id": "p1", "signature": "q -> a"}
    worker.ok("create_program", args)
    worker.error("create_program", args, "already_exists")
    assert "program_type" in worker.invalid_fields("create_program", {
        "session_id": "create", "signature": "q -> a", "program_type": "program_of_thought"})
    assert "demos.0.zzz" in worker.invalid_fields("create_program", {
        "session_id": "create", "signature": "q -> a", "demos": [{"q": "x", "zzz": 1}]})
    assert "demos.0.n" in worker.invalid_fields("create_program", {
        "session_id": "create", "signature": "q -> n: int", "demos": [{"q": "x", "n": "one"}]})
    assert "lm.temperature" in worker.invalid_fields("create_program", {
        "session_id": "create", "signature": "q -> a", "lm": {"model": "mock", "temperature": 9}})
    assert "program_id" in worker.invalid_fields("create_program", {
        "session_id": "create", "signature": "q -> a", "program_id": ""})


def test_programs_are_listed_fetched_and_deleted(worker: RecordingWorker) -> None:
    sid = "crud"
    worker.ok("create_program", {"session_id": sid, "program_id": "a", "signature": "q -> a",
                                 "demos": [{"q": "1", "a": "2"}], "instructions": "Be brief."})
    worker.ok("create_program", {"session_id": sid, "program_id": "b", "signature": "q -> a",
                                 "program_type": "chain_of_thought"})
    listed = worker.ok("list_programs", {"session_id": sid})["programs"]
    assert [p["program_id"] for p in listed] == ["a", "b"]
    program = worker.ok("get_program", {"session_id": sid, "program_id": "a"})
    assert program["demos"] == 1 and program["instructions"] == "Be brief."
    assert program["program_type"] == "predict"
    assert worker.ok("delete_program", {"session_id": sid, "program_id": "a"})["deleted"]
    worker.error("get_program", {"session_id": sid, "program_id": "a"}, "not_found")
    worker.error("delete_program", {"session_id": sid, "program_id": "a"}, "not_found")
    assert worker.ok("list_programs", {"session_id": "never-used"})["programs"] == []


def test_sessions_do_not_see_each_others_programs(worker: RecordingWorker) -> None:
    worker.ok("create_program", {"session_id": "iso-a", "program_id": "mine",
                                 "signature": "q -> a"})
    for command in ("get_program", "delete_program", "export_program"):
        worker.error(command, {"session_id": "iso-b", "program_id": "mine"}, "not_found")
    worker.error("execute_program", {"session_id": "iso-b", "program_id": "mine",
                                     "inputs": {"q": "x"}}, "not_found")
    worker.error("get_program", {"program_id": "mine"}, "not_found")  # the default session


# ----- execute_program -----


def test_execute_returns_typed_outputs(worker: RecordingWorker) -> None:
    sid = "typed"
    answer = {"n": 7, "ratio": 0.25, "flag": True, "tags": ["x", "y"], "meta": {"k": [1, 2]},
              "label": "neg", "text": "hello"}
    worker.ok("configure_lm", mock_lm("typed", responses={"go": answer}) | {"session_id": sid})
    signature = {
        "inputs": [{"name": "q"}],
        "outputs": [{"name": "n", "type": "int"}, {"name": "ratio", "type": "float"},
                    {"name": "flag", "type": "bool"}, {"name": "tags", "type": "list[str]"},
                    {"name": "meta", "type": "dict"},
                    {"name": "label", "type": {"type": "enum", "choices": ["pos", "neg"]}},
                    {"name": "text"}],
    }
    worker.ok("create_program", {"session_id": sid, "program_id": "t", "signature": signature})
    result = worker.ok("execute_program", {"session_id": sid, "program_id": "t",
                                           "inputs": {"q": "go"}})
    assert result["outputs"] == answer
    assert result["lm"] == "mock/typed" and result["lm_source"] == "session"
    assert result["usage"]["prompt_tokens"] > 0 and result["usage"]["completion_tokens"] > 0
    assert result["duration_ms"] >= 0


def test_chain_of_thought_returns_reasoning(worker: RecordingWorker) -> None:
    sid = "cot"
    worker.ok("configure_lm", mock_lm("cot", responses={
        "2+2?": {"reasoning": "Two plus two.", "answer": 4}}) | {"session_id": sid})
    worker.ok("create_program", {"session_id": sid, "program_id": "c",
                                 "signature": "q -> answer: int",
                                 "program_type": "chain_of_thought"})
    outputs = worker.ok("execute_program", {"session_id": sid, "program_id": "c",
                                            "inputs": {"q": "2+2?"}})["outputs"]
    assert outputs == {"reasoning": "Two plus two.", "answer": 4}


def test_one_mock_answer_serves_predict_and_chain_of_thought(worker: RecordingWorker) -> None:
    """`reasoning` in a field map is dropped by programs that do not ask for it; any other
    key that is not an output field makes the map a plain value (for dict outputs)."""
    sid = "shared-answers"
    answers = {"q1": {"answer": "A1", "reasoning": "because"}, "q2": {"answer": "A2", "x": 1}}
    worker.ok("configure_lm", mock_lm("shared", responses=answers) | {"session_id": sid})
    for program_id, program_type in (("p", "predict"), ("c", "chain_of_thought")):
        worker.ok("create_program", {"session_id": sid, "program_id": program_id,
                                     "signature": "question -> answer",
                                     "program_type": program_type})

    def run(program_id: str, question: str) -> dict[str, Any]:
        return worker.ok("execute_program", {"session_id": sid, "program_id": program_id,
                                             "inputs": {"question": question}})["outputs"]

    assert run("p", "q1") == {"answer": "A1"}
    assert run("c", "q1") == {"reasoning": "because", "answer": "A1"}
    assert json.loads(run("p", "q2")["answer"]) == {"answer": "A2", "x": 1}


def test_mock_answers_are_never_taken_for_secrets(worker: RecordingWorker) -> None:
    """Mock options hold canned answers, not credentials: output fields named like secrets
    (token_count, passage, author) come back, echo and export as given."""
    sid = "secret-looking-outputs"
    text = "the quick brown fox jumps"
    answer = {"token_count": text, "passage": text, "author": text}
    configured = worker.ok("configure_lm", mock_lm("fields", responses={"q": answer})
                           | {"session_id": sid})
    assert configured["lm"]["extra"]["responses"] == {"q": answer}
    worker.ok("create_program", {"session_id": sid, "program_id": "p",
                                 "signature": "question -> token_count, passage, author",
                                 "lm": mock_lm("own", responses={"q": answer})})
    outputs = worker.ok("execute_program", {"session_id": sid, "program_id": "p",
                                            "inputs": {"question": "q"}})["outputs"]
    assert outputs == answer
    document = worker.ok("export_program", {"session_id": sid, "program_id": "p"})["document"]
    assert document["lm"]["extra"]["responses"] == {"q": answer}
    assert document.get("secrets_omitted", []) == []


def test_mock_sequence_and_fail_are_not_answered_from_the_cache(
    worker: RecordingWorker,
) -> None:
    """Their answers depend on the call's order, not only its prompt, so by default they
    are uncached: the same input thrice walks the sequence."""
    sid = "stateful"
    worker.ok("configure_lm", mock_lm("steps", sequence=["one", "two"], default="later")
              | {"session_id": sid})
    worker.ok("create_program", {"session_id": sid, "program_id": "s", "signature": "q -> a"})

    def run() -> dict[str, Any]:
        return worker.request("execute_program", {"session_id": sid, "program_id": "s",
                                                  "inputs": {"q": "same"}}, timeout=60)

    assert [run()["result"]["outputs"]["a"] for _ in range(3)] == ["one", "two", "later"]
    # DSPy would retry a transient failure itself; with no retries the host sees it.
    worker.ok("configure_lm", mock_lm("flaky", fail=1, default="fine")
              | {"session_id": sid, "num_retries": 0})
    first = run()
    assert first["success"] is False and first["error"]["type"] == "lm_error"
    assert first["error"]["retryable"] is True
    assert run()["result"]["outputs"]["a"] == "fine"
    worker.ok("configure_lm", mock_lm("down", fail=True) | {"session_id": sid, "num_retries": 0})
    assert [run()["error"]["type"] for _ in range(2)] == ["lm_error", "lm_error"]
    assert "fail" in worker.invalid_fields("configure_lm", mock_lm("bad", fail=-1))[0]


def test_mock_sequence_default_and_placeholders(worker: RecordingWorker) -> None:
    sid = "seq"
    worker.ok("configure_lm", mock_lm("seq", sequence=["one", "two"], default="later")
              | {"session_id": sid, "cache": False})
    worker.ok("create_program", {"session_id": sid, "program_id": "s", "signature": "q -> a"})
    answers = [worker.ok("execute_program", {"session_id": sid, "program_id": "s",
                                             "inputs": {"q": "x"}})["outputs"]["a"]
               for _ in range(3)]
    assert answers == ["one", "two", "later"]
    worker.ok("configure_lm", {"session_id": sid, "model": "mock"})
    worker.ok("create_program", {"session_id": sid, "program_id": "p",
                                 "signature": "q -> a, n: int, ok: bool, xs: list[int]"})
    outputs = worker.ok("execute_program", {"session_id": sid, "program_id": "p",
                                            "inputs": {"q": "x"}})["outputs"]
    assert outputs == {"a": "mock a", "n": 0, "ok": False, "xs": []}


def test_execute_input_validation_names_fields(worker: RecordingWorker) -> None:
    sid = "inputs"
    worker.ok("create_program", {"session_id": sid, "program_id": "p",
                                 "signature": "question, n: int -> answer"})
    base = {"session_id": sid, "program_id": "p"}
    assert set(worker.invalid_fields("execute_program", base | {"inputs": {"question": "x"}})) \
        == {"inputs.n"}
    fields = worker.invalid_fields("execute_program",
                                   base | {"inputs": {"question": "x", "n": 1, "bogus": 2}})
    assert fields == ["inputs.bogus"]
    assert worker.invalid_fields("execute_program",
                                 base | {"inputs": {"question": "x", "n": "1"}}) == ["inputs.n"]
    assert "config.temperature" in worker.invalid_fields(
        "execute_program", base | {"inputs": {"question": "x", "n": 1},
                                   "config": {"temperature": 7}})
    assert "config.colour" in worker.invalid_fields(
        "execute_program", base | {"inputs": {"question": "x", "n": 1}, "config": {"colour": 1}})
    assert "inputs" in worker.invalid_fields("execute_program", base | {"inputs": [1]})


def test_unparseable_answer_is_lm_error_with_an_excerpt(worker: RecordingWorker) -> None:
    sid = "unparseable"
    raw = "I refuse to follow the format. " * 50
    worker.ok("configure_lm", mock_lm("raw", default={"__raw__": raw}) | {"session_id": sid})
    worker.ok("create_program", {"session_id": sid, "program_id": "p", "signature": "q -> n: int"})
    error = worker.error("execute_program", {"session_id": sid, "program_id": "p",
                                             "inputs": {"q": "x"}}, "lm_error")
    details = error["details"]
    assert details["reason"] == "unparseable_answer" and error["retryable"] is False
    assert details["raw_excerpt"].startswith("I refuse")
    assert len(details["raw_excerpt"]) < len(raw) and details["raw_length"] == len(raw)
    assert details["expected_fields"] == ["n"]


def test_json_adapter_fallback_reaches_the_mock_in_json_mode(worker: RecordingWorker) -> None:
    sid = "json-fallback"
    worker.ok("configure_lm", mock_lm("json", sequence=[{"__raw__": "garbage"},
                                                        {"n": 3, "tags": ["a"]}])
              | {"session_id": sid, "cache": False})
    worker.ok("create_program", {"session_id": sid, "program_id": "p",
                                 "signature": "q -> n: int, tags: list[str]"})
    result = worker.ok("execute_program", {"session_id": sid, "program_id": "p",
                                           "inputs": {"q": "x"}})
    assert result["outputs"] == {"n": 3, "tags": ["a"]}
    assert result["usage"]["requests"] == 2  # the chat attempt, then DSPy's JSON fallback


@pytest.mark.parametrize(("kind", "error_class", "retryable"), [
    ("rate_limit", "LMRateLimitError", True),
    ("server", "LMServerError", True),
    ("timeout", "LMTimeoutError", True),
    ("transport", "LMTransportError", True),
    ("auth", "LMAuthError", False),
    ("invalid_request", "LMInvalidRequestError", False),
])
def test_provider_errors_map_to_lm_error(
    worker: RecordingWorker, kind: str, error_class: str, retryable: bool
) -> None:
    sid = f"fail-{kind}"
    worker.ok("configure_lm", mock_lm(kind, fail={"error": kind})
              | {"session_id": sid, "num_retries": 0})
    worker.ok("create_program", {"session_id": sid, "program_id": "p", "signature": "q -> a"})
    error = worker.error("execute_program", {"session_id": sid, "program_id": "p",
                                             "inputs": {"q": "x"}}, "lm_error")
    assert error["retryable"] is retryable
    assert error["details"]["error_class"] == error_class
    assert error["details"]["reason"] == "provider_error"


def test_mock_latency_beyond_timeout_s_is_a_provider_timeout(worker: RecordingWorker) -> None:
    sid = "mock-timeout"
    worker.ok("configure_lm", mock_lm("late", latency_ms=60_000)
              | {"session_id": sid, "timeout_s": 0.05, "num_retries": 0})
    worker.ok("create_program", {"session_id": sid, "program_id": "p", "signature": "q -> a"})
    error = worker.error("execute_program", {"session_id": sid, "program_id": "p",
                                             "inputs": {"q": "x"}}, "lm_error")
    assert error["details"]["error_class"] == "LMTimeoutError" and error["retryable"] is True


def test_retryable_failures_are_retried_by_dspy(worker: RecordingWorker) -> None:
    sid = "retry"
    worker.ok("configure_lm", mock_lm("retry", fail={"times": 2}, default="finally")
              | {"session_id": sid, "num_retries": 2})
    worker.ok("create_program", {"session_id": sid, "program_id": "p", "signature": "q -> a"})
    result = worker.ok("execute_program", {"session_id": sid, "program_id": "p",
                                           "inputs": {"q": "x"}})
    assert result["outputs"]["a"] == "finally"


def test_per_call_config_and_cache_bypass(worker: RecordingWorker) -> None:
    sid = "config"
    # A sequence mock is uncached unless asked: here it is, to observe the cache.
    worker.ok("configure_lm", mock_lm("cfg", sequence=["a1", "a2", "a3"])
              | {"session_id": sid, "cache": True})
    worker.ok("create_program", {"session_id": sid, "program_id": "p", "signature": "q -> a"})
    run = {"session_id": sid, "program_id": "p", "inputs": {"q": "x"}}
    first = worker.ok("execute_program", run)
    again = worker.ok("execute_program", run)  # cached
    assert first["outputs"] == again["outputs"] == {"a": "a1"}
    assert again["usage"]["cached_requests"] == 1
    hotter = worker.ok("execute_program", run | {"config": {"temperature": 0.9}})
    assert hotter["outputs"] == {"a": "a2"}  # a different request: not the cached one
    fresh = worker.ok("execute_program", run | {"config": {"cache": False}})
    assert fresh["outputs"] == {"a": "a3"} and fresh["usage"]["cached_requests"] == 0


# ----- concurrency -----


def test_two_sessions_500_interleaved_requests_no_cross_talk(worker: RecordingWorker) -> None:
    for sid, word in (("xa", "alpha"), ("xb", "beta")):
        worker.ok("configure_lm", mock_lm(f"x-{word}", default=word, latency_ms=5,
                                          responses={"q-7": f"{word}-seven"}) | {"session_id": sid})
        worker.ok("create_program", {"session_id": sid, "program_id": "p", "signature": "q -> a"})
    expected: dict[Any, tuple[str, str]] = {}
    for i in range(250):
        for sid in ("xa", "xb"):
            # Both sessions ask the same questions: a shared cache would leak answers.
            request_id = worker.start("execute_program", {"session_id": sid, "program_id": "p",
                                                          "inputs": {"q": f"q-{i % 50}"}})
            expected[request_id] = (sid, i % 50)
    for request_id, (sid, question) in expected.items():
        response = worker.response(request_id, timeout=120)
        assert response["success"], response
        word = "alpha" if sid == "xa" else "beta"
        want = f"{word}-seven" if question == 7 else word
        assert response["result"]["outputs"] == {"a": want}
        assert response["result"]["lm"] == f"mock/x-{word}"
    assert worker.ok("get_stats")["max_in_flight"] >= 100  # they really ran concurrently
    for sid, word in (("xa", "alpha"), ("xb", "beta")):
        usage = worker.ok("get_usage", {"session_id": sid})
        assert list(usage["models"]) == [f"mock/x-{word}"]
        assert usage["total"]["requests"] == 250


# ----- usage and sessions -----


def test_usage_is_per_session_and_resettable(worker: RecordingWorker) -> None:
    for sid, count in (("use-a", 3), ("use-b", 1)):
        worker.ok("configure_lm", mock_lm(f"use-{sid}") | {"session_id": sid, "cache": False})
        worker.ok("create_program", {"session_id": sid, "program_id": "p", "signature": "q -> a"})
        for i in range(count):
            worker.ok("execute_program", {"session_id": sid, "program_id": "p",
                                          "inputs": {"q": str(i)}})
    a = worker.ok("get_usage", {"session_id": "use-a"})
    b = worker.ok("get_usage", {"session_id": "use-b"})
    assert a["models"]["mock/use-use-a"]["requests"] == 3 and "mock/use-use-b" not in a["models"]
    assert b["models"]["mock/use-use-b"]["requests"] == 1
    assert a["total"]["total_tokens"] == (a["total"]["prompt_tokens"]
                                          + a["total"]["completion_tokens"]) > 0
    assert a["total"]["cost_usd"] is None  # the mock has no price
    assert worker.ok("reset_usage", {"session_id": "use-a"})["reset"]
    assert worker.ok("get_usage", {"session_id": "use-a"})["models"] == {}
    assert worker.ok("get_usage", {"session_id": "use-b"})["total"]["requests"] == 1


def test_list_and_end_sessions(worker: RecordingWorker) -> None:
    worker.ok("configure_lm", mock_lm("end") | {"session_id": "ending"})
    worker.ok("create_program", {"session_id": "ending", "program_id": "p", "signature": "q -> a"})
    worker.ok("execute_program", {"session_id": "ending", "program_id": "p", "inputs": {"q": "x"}})
    sessions = {s["session_id"]: s for s in worker.ok("list_sessions")["sessions"]}
    assert sessions["ending"]["programs"] == 1 and sessions["ending"]["lm"] == "mock/end"
    assert sessions["ending"]["last_used"] > 0
    only = worker.ok("list_sessions", {"session_id": "ending"})["sessions"]
    assert [s["session_id"] for s in only] == ["ending"]
    ended = worker.ok("end_session", {"session_id": "ending"})
    assert ended == {"ended": True, "session_id": "ending", "programs": 1}
    assert "ending" not in {s["session_id"] for s in worker.ok("list_sessions")["sessions"]}
    worker.error("get_program", {"session_id": "ending", "program_id": "p"}, "not_found")
    assert worker.ok("get_usage", {"session_id": "ending"})["models"] == {}
    worker.error("end_session", {"session_id": "ending"}, "not_found")
    # The id can be used again: a new, empty session.
    worker.ok("create_program", {"session_id": "ending", "program_id": "p", "signature": "q -> a"})
    worker.error("execute_program", {"session_id": "ending", "program_id": "p",
                                     "inputs": {"q": "x"}}, "lm_not_configured")


def test_get_stats_shows_sessions_and_breakers(worker: RecordingWorker) -> None:
    worker.ok("configure_lm", mock_lm("stats") | {"session_id": "stats"})
    worker.ok("create_program", {"session_id": "stats", "program_id": "p", "signature": "q -> a"})
    worker.ok("execute_program", {"session_id": "stats", "program_id": "p", "inputs": {"q": "x"}})
    stats = worker.ok("get_stats")
    assert stats["sessions"] >= 1 and stats["programs"] >= 1
    breakers = stats["circuit_breakers"]
    assert breakers and all(b["state"] in {"closed", "open", "half_open"}
                            for b in breakers.values())
    assert TEST_API_KEY not in repr(stats)


# ----- cache -----


def test_cache_defaults_to_memory_only_and_never_writes_home(home: Path, tmp_path: Path) -> None:
    worker = RecordingWorker("--disk-cache-root", str(tmp_path), env={"HOME": str(home)})
    try:
        _cache_defaults_to_memory_only(worker, home, tmp_path)
    finally:
        worker.close()


def _cache_defaults_to_memory_only(worker: RecordingWorker, home: Path, tmp_path: Path) -> None:
    settings = worker.ok("configure_cache", {})
    assert settings["enable_memory"] is True and settings["enable_disk"] is False
    assert list(home.iterdir()) == []
    disk = tmp_path / "cache"
    settings = worker.ok("configure_cache", {"enable_disk": True, "disk_dir": str(disk),
                                             "memory_max_entries": 100})
    assert settings["enable_disk"] is True and settings["disk_dir"] == str(disk)
    worker.ok("configure_lm", mock_lm("disk") | {"session_id": "disk"})
    worker.ok("create_program", {"session_id": "disk", "program_id": "p", "signature": "q -> a"})
    worker.ok("execute_program", {"session_id": "disk", "program_id": "p", "inputs": {"q": "x"}})
    assert any(disk.rglob("*"))
    settings = worker.ok("configure_cache", {"enable_disk": False, "memory_max_entries": 10_000})
    assert settings["enable_disk"] is False
    assert "memory_max_entries" in worker.invalid_fields("configure_cache",
                                                         {"memory_max_entries": 0})
    assert list(home.iterdir()) == []


# ----- export / import -----


def test_export_import_round_trip(worker: RecordingWorker) -> None:
    lm = mock_lm("exp", responses={"ping": {"reasoning": "r", "answer": "pong"}},
                 default="other") | {"api_key": TEST_API_KEY, "temperature": 0.1}
    worker.ok("create_program", {
        "session_id": "exp-a", "program_id": "p", "program_type": "chain_of_thought",
        "signature": {"inputs": [{"name": "q", "desc": "a question"}],
                      "outputs": [{"name": "answer"}]},
        "demos": [{"q": "hi", "reasoning": "greeting", "answer": "hello"}],
        "instructions": "Answer tersely.", "lm": lm,
    })
    document = worker.ok("export_program", {"session_id": "exp-a", "program_id": "p"})["document"]
    assert document["format"] == "dspy-bridge/program" and document["version"] == 1
    assert document["lm"]["model"] == "mock/exp" and "api_key" not in document["lm"]
    assert "lm.api_key" in document["secrets_omitted"]
    assert document["state"]["predict"]["demos"][0]["answer"] == "hello"
    assert document["state"]["predict"]["signature"]["instructions"] == "Answer tersely."
    imported = worker.ok("import_program", {"session_id": "exp-b", "document": document})
    assert imported["program_id"] == "p" and imported["session_id"] == "exp-b"
    worker.error("import_program", {"session_id": "exp-b", "document": document},
                 "already_exists")
    renamed = worker.ok("import_program", {"session_id": "exp-b", "program_id": "copy",
                                           "document": document})
    assert renamed["program_id"] == "copy"
    original = worker.ok("get_program", {"session_id": "exp-a", "program_id": "p"})
    copy = worker.ok("get_program", {"session_id": "exp-b", "program_id": "p"})
    for key in ("program_type", "signature", "demos", "instructions"):
        assert original[key] == copy[key], key
    assert original["lm"].pop("api_key") == "<redacted>"  # a key by value is never exported
    assert original["lm"] == copy["lm"]
    runs = [worker.ok("execute_program", {"session_id": sid, "program_id": "p",
                                          "inputs": {"q": "ping"}})
            for sid in ("exp-a", "exp-b")]
    assert runs[0]["outputs"] == runs[1]["outputs"] == {"reasoning": "r", "answer": "pong"}
    assert runs[0]["usage"]["prompt_tokens"] == runs[1]["usage"]["prompt_tokens"]
    assert worker.ok("export_program", {"session_id": "exp-b", "program_id": "p"})[
        "document"]["state"] == document["state"]
    # Another worker, another session: the same program, the same answers.
    other = RecordingWorker()
    try:
        other.ok("import_program", {"session_id": "elsewhere", "document": document})
        moved = other.ok("execute_program", {"session_id": "elsewhere", "program_id": "p",
                                             "inputs": {"q": "ping"}})
        assert moved["outputs"] == runs[0]["outputs"]
        assert moved["usage"]["prompt_tokens"] == runs[0]["usage"]["prompt_tokens"]
        other.assert_no_secret_leaked()
    finally:
        other.close()


@pytest.mark.parametrize(("change", "field"), [
    (lambda d: d.update(format="other"), "document.format"),
    (lambda d: d.update(version=2), "document.version"),
    (lambda d: d.update(callbacks=[]), "document.callbacks"),
    (lambda d: d.update(program_type="program_of_thought"), "document.program_type"),
    (lambda d: d["signature"]["outputs"][0].update(type="os.system"),
     "document.signature.outputs.0.type"),
    (lambda d: d["state"].update(lm={"model": "openai/x"}), "document.state.lm"),
    (lambda d: d["state"].update(forward="x"), "document.state"),
    (lambda d: d["state"]["demos"].append({"nope": 1}), "document.state.demos.1"),
    (lambda d: d["state"]["signature"].update(fields=[]), "document.state.signature.fields"),
    (lambda d: d.update(lm={"model": "mock", "temperature": 5}), "document.lm.temperature"),
])
def test_import_rejects_bad_documents(worker: RecordingWorker, change: Any, field: str) -> None:
    worker.ok("create_program", {"session_id": "imp-src", "program_id": field,
                                 "signature": "q -> a", "demos": [{"q": "1", "a": "2"}]})
    document = worker.ok("export_program", {"session_id": "imp-src", "program_id": field})[
        "document"]
    change(document)
    assert field in worker.invalid_fields("import_program", {"session_id": "imp-dst",
                                                             "document": document})
    # nothing was made of it: not even the session it named
    assert worker.ok("list_sessions", {"session_id": "imp-dst"})["sessions"] == []


# ----- timeout and cancel -----


def test_timeout_stops_a_slow_mock_call(worker: RecordingWorker) -> None:
    sid = "slow"
    worker.ok("configure_lm", mock_lm("slow", latency_ms=60_000) | {"session_id": sid})
    worker.ok("create_program", {"session_id": sid, "program_id": "p", "signature": "q -> a"})
    started = time.monotonic()
    error = worker.error("execute_program", {"session_id": sid, "program_id": "p",
                                             "inputs": {"q": "x"}}, "timeout", timeout_ms=300)
    assert time.monotonic() - started < 10
    assert error["retryable"] is True
    assert worker.ok("ping")["in_flight"] == 0
    session = next(s for s in worker.ok("list_sessions")["sessions"] if s["session_id"] == sid)
    assert session["in_flight"] == 0  # the handler unwound: the mock's await was cancelled


def test_cancel_stops_a_slow_mock_call(worker: RecordingWorker) -> None:
    sid = "slow-cancel"
    worker.ok("configure_lm", mock_lm("slow", latency_ms=60_000) | {"session_id": sid})
    worker.ok("create_program", {"session_id": sid, "program_id": "p", "signature": "q -> a"})
    request_id = worker.start("execute_program", {"session_id": sid, "program_id": "p",
                                                  "inputs": {"q": "x"}})
    assert worker.ok("cancel", {"request_id": request_id})["cancelled"] is True
    response = worker.response(request_id, timeout=10)
    assert response["success"] is False and response["error"]["type"] == "cancelled"
    session = next(s for s in worker.ok("list_sessions")["sessions"] if s["session_id"] == sid)
    assert session["in_flight"] == 0
    # The worker keeps serving the session.
    worker.ok("configure_lm", mock_lm("fast") | {"session_id": sid})
    assert worker.ok("execute_program", {"session_id": sid, "program_id": "p",
                                         "inputs": {"q": "y"}})["outputs"] == {"a": "mock a"}


# ----- circuit breaker -----


def _breaker(worker: RecordingWorker, model: str) -> dict[str, Any]:
    breakers = worker.ok("get_stats")["circuit_breakers"]
    return next(b for b in breakers.values() if b["model"] == model)


def test_circuit_breaker_opens_fails_fast_and_recovers(worker: RecordingWorker) -> None:
    sid = "breaker"
    worker.ok("configure_lm", mock_lm("breaker", fail={"times": 3, "error": "server"},
                                      default="up again")
              | {"session_id": sid, "num_retries": 0, "cache": False,
                 "circuit_breaker": {"failure_threshold": 3, "cooldown_ms": 1000}})
    worker.ok("create_program", {"session_id": sid, "program_id": "p", "signature": "q -> a"})
    run = {"session_id": sid, "program_id": "p", "inputs": {"q": "x"}}
    for _ in range(3):
        error = worker.error("execute_program", run, "lm_error")
        assert error["details"]["reason"] == "provider_error"
    assert _breaker(worker, "mock/breaker")["state"] == "open"
    error = worker.error("execute_program", run, "lm_error")
    assert error["details"]["reason"] == "circuit_open" and error["retryable"] is True
    assert error["details"]["retry_after_ms"] <= 1000
    assert _breaker(worker, "mock/breaker")["rejected_calls"] == 1
    time.sleep(1.05)  # the cool-down is wall-clock time: nothing to await
    assert worker.ok("execute_program", run)["outputs"] == {"a": "up again"}  # the probe
    breaker = _breaker(worker, "mock/breaker")
    assert breaker["state"] == "closed" and breaker["consecutive_failures"] == 0


def test_circuit_breaker_failed_probe_reopens(worker: RecordingWorker) -> None:
    sid = "breaker-probe"
    worker.ok("configure_lm", mock_lm("probe", fail={"error": "rate_limit"})
              | {"session_id": sid, "num_retries": 0,
                 "circuit_breaker": {"failure_threshold": 1, "cooldown_ms": 1000}})
    worker.ok("create_program", {"session_id": sid, "program_id": "p", "signature": "q -> a"})
    run = {"session_id": sid, "program_id": "p", "inputs": {"q": "x"}}
    assert worker.error("execute_program", run, "lm_error")["details"]["reason"] == "provider_error"
    assert worker.error("execute_program", run, "lm_error")["details"]["reason"] == "circuit_open"
    time.sleep(1.05)
    assert worker.error("execute_program", run, "lm_error")["details"]["reason"] == "provider_error"
    breaker = _breaker(worker, "mock/probe")
    assert breaker["state"] == "open" and breaker["times_opened"] == 2


def test_non_retryable_errors_do_not_open_the_breaker(worker: RecordingWorker) -> None:
    sid = "breaker-auth"
    worker.ok("configure_lm", mock_lm("auth-breaker", fail={"error": "auth"})
              | {"session_id": sid, "circuit_breaker": {"failure_threshold": 1}})
    worker.ok("create_program", {"session_id": sid, "program_id": "p", "signature": "q -> a"})
    for _ in range(3):
        error = worker.error("execute_program", {"session_id": sid, "program_id": "p",
                                                 "inputs": {"q": "x"}}, "lm_error")
        assert error["details"]["reason"] == "provider_error"
    assert _breaker(worker, "mock/auth-breaker")["state"] == "closed"


# ----- the secret scan (runs last in this module) -----


def test_zz_api_key_never_appears_in_replies_or_stderr(worker: RecordingWorker) -> None:
    worker.ok("configure_lm", mock_lm("leak", fail={"error": "auth", "message":
                                                    f"bad key {TEST_API_KEY}"})
              | {"session_id": "leak", "api_key": TEST_API_KEY, "num_retries": 0})
    worker.ok("create_program", {"session_id": "leak", "program_id": "p", "signature": "q -> a"})
    error = worker.error("execute_program", {"session_id": "leak", "program_id": "p",
                                             "inputs": {"q": "x"}}, "lm_error")
    assert "<redacted>" in error["message"]
    worker.ok("get_stats")
    worker.ok("list_sessions")
    worker.assert_no_secret_leaked()


# ----- limits, idle eviction and precedence need their own workers -----


def test_limits_are_limit_exceeded() -> None:
    limited = RecordingWorker("--max-sessions", "2", "--max-programs-per-session", "2",
                              "--max-input-bytes", "200")
    try:
        limited.ok("create_program", {"session_id": "s1", "program_id": "a", "signature": "q -> a"})
        limited.ok("create_program", {"session_id": "s1", "program_id": "b", "signature": "q -> a"})
        error = limited.error("create_program", {"session_id": "s1", "signature": "q -> a"},
                              "limit_exceeded")
        assert error["details"]["limit"] == "max_programs_per_session"
        limited.ok("configure_lm", {"session_id": "s2", "model": "mock"})
        error = limited.error("configure_lm", {"session_id": "s3", "model": "mock"},
                              "limit_exceeded")
        assert error["details"]["limit"] == "max_sessions" and error["retryable"] is True
        limited.ok("configure_lm", {"session_id": "s1", "model": "mock"})
        error = limited.error("execute_program", {"session_id": "s1", "program_id": "a",
                                                  "inputs": {"q": "x" * 300}}, "limit_exceeded")
        assert error["details"]["limit"] == "max_input_bytes"
        assert limited.ok("execute_program", {"session_id": "s1", "program_id": "a",
                                              "inputs": {"q": "x"}})["outputs"]
        limited.ok("end_session", {"session_id": "s2"})
        limited.ok("configure_lm", {"session_id": "s3", "model": "mock"})
    finally:
        limited.close()


def test_idle_sessions_are_evicted_with_an_event() -> None:
    evicting = RecordingWorker("--session-idle-ttl-s", "0.3")
    try:
        evicting.ok("create_program", {"session_id": "idle", "program_id": "p",
                                       "signature": "q -> a"})
        event = evicting.next_event("session_evicted", timeout=30)
        assert event["session_id"] == "idle" and event["programs"] == 1
        assert event["idle_s"] >= 0.3
        assert evicting.ok("list_sessions")["sessions"] == []
        evicting.error("get_program", {"session_id": "idle", "program_id": "p"}, "not_found")
    finally:
        evicting.close()


def test_lm_precedence_call_program_session_worker() -> None:
    fresh = RecordingWorker()
    try:
        for sid in ("p1", "p2"):
            fresh.ok("create_program", {"session_id": sid, "program_id": "plain",
                                        "signature": "q -> a"})
        run = {"session_id": "p1", "program_id": "plain", "inputs": {"q": "x"}}
        error = fresh.error("execute_program", run, "lm_not_configured")
        assert error["retryable"] is False
        fresh.ok("configure_lm", mock_lm("worker", default="from worker"))
        result = fresh.ok("execute_program", run)
        assert (result["outputs"]["a"], result["lm_source"]) == ("from worker", "worker")
        fresh.ok("configure_lm", mock_lm("session", default="from session") | {"session_id": "p1"})
        result = fresh.ok("execute_program", run)
        assert (result["outputs"]["a"], result["lm_source"]) == ("from session", "session")
        # The other session still uses the worker default.
        other = fresh.ok("execute_program", run | {"session_id": "p2"})
        assert other["outputs"]["a"] == "from worker"
        fresh.ok("create_program", {"session_id": "p1", "program_id": "own", "signature": "q -> a",
                                    "lm": mock_lm("program", default="from program")})
        result = fresh.ok("execute_program", run | {"program_id": "own"})
        assert (result["outputs"]["a"], result["lm_source"]) == ("from program", "program")
        result = fresh.ok("execute_program", run | {"program_id": "own",
                                                    "lm": mock_lm("call", default="from call")})
        assert (result["outputs"]["a"], result["lm_source"]) == ("from call", "call")
        assert result["lm"] == "mock/call"
        result = fresh.ok("execute_program", run | {"lm": "mock/shorthand"})
        assert (result["outputs"]["a"], result["lm"]) == ("mock a", "mock/shorthand")
        # Concurrent requests with different LMs each keep their own.
        ids = {fresh.start("execute_program", run | {"lm": mock_lm(f"c{i}", default=str(i))}): i
               for i in range(20)}
        for request_id, i in ids.items():
            assert fresh.response(request_id)["result"]["outputs"]["a"] == str(i)
        fresh.assert_no_secret_leaked()
    finally:
        fresh.close()
