"""The real provider path: `openai/...` models through dspy.LM's HTTP engines (DSPy's
native lm15 engine, and litellm) against a local OpenAI-compatible server.

The worker runs with an audit hook that reports every network connection or name lookup
that is not the loopback interface: no test may touch the internet.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.engine_support import (
    ENV_API_KEY,
    ENV_KEY_NAME,
    TEST_API_KEY,
    RecordingWorker,
    offline_worker,
)
from tests.fake_openai_server import FakeOpenAI, fake_openai


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAI]:
    with fake_openai() as fake:
        yield fake


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RecordingWorker]:
    with offline_worker(tmp_path_factory) as process:
        yield process
        process.assert_no_secret_leaked()


def configure(worker: RecordingWorker, server: FakeOpenAI, sid: str, **settings: Any) -> None:
    before = len(server.requests)
    worker.ok("configure_lm", {"session_id": sid, "model": "openai/gpt-4o-mini",
                               "api_key": TEST_API_KEY, "api_base": server.base_url,
                               "num_retries": 0, "cache": False, **settings})
    assert len(server.requests) == before  # configure_lm makes no LM call
    worker.ok("create_program", {"session_id": sid, "program_id": "qa",
                                 "signature": "question -> answer",
                                 "demos": [{"question": "demo question", "answer": "demo answer"}]})


ENGINES = [pytest.param({}, id="native"), pytest.param({"extra": {"engine": "litellm"}},
                                                         id="litellm")]


@pytest.mark.parametrize("engine", ENGINES)
def test_openai_model_through_http(worker: RecordingWorker, server: FakeOpenAI,
                                   engine: dict[str, Any]) -> None:
    sid = f"http-{next(iter(engine.get('extra', {}).values()), 'native')}"
    configure(worker, server, sid, **engine)
    server.answers["answer"] = "forty-two"
    before = len(server.requests)
    result = worker.ok("execute_program", {"session_id": sid, "program_id": "qa",
                                           "inputs": {"question": "meaning of life?"},
                                           "config": {"temperature": 0.3}})
    assert result["outputs"] == {"answer": "forty-two"}
    assert result["lm"] == "openai/gpt-4o-mini" and result["lm_source"] == "session"
    sent = server.requests[before:]
    assert len(sent) == 1
    request = sent[0]
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["authorization"] == f"Bearer {TEST_API_KEY}"
    assert request["body"]["temperature"] == 0.3
    assert request["body"]["model"] == "gpt-4o-mini"
    contents = "".join(str(m.get("content")) for m in request["body"]["messages"])
    assert "meaning of life?" in contents and "demo answer" in contents  # the demo went along
    usage = result["usage"]
    assert usage["requests"] == 1 and usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["cost_usd"] is not None and usage["cost_usd"] > 0  # gpt-4o-mini has a price
    totals = worker.ok("get_usage", {"session_id": sid})["models"]["openai/gpt-4o-mini"]
    assert totals["requests"] == 1 and totals["cost_usd"] == usage["cost_usd"]


@pytest.mark.parametrize("engine", ENGINES)
def test_a_streamed_answer_arrives_in_chunks_over_http(worker: RecordingWorker,
                                                       server: FakeOpenAI,
                                                       engine: dict[str, Any]) -> None:
    sid = f"stream-{next(iter(engine.get('extra', {}).values()), 'native')}"
    configure(worker, server, sid, **engine)
    server.answers["answer"] = "streamed over real HTTP in several small pieces"
    streamed_before = server.streamed
    request_id = worker.start("execute_program", {"session_id": sid, "program_id": "qa",
                                                  "inputs": {"question": "stream?"},
                                                  "stream": True})
    response = worker.response(request_id, timeout=60)
    assert response["success"], response
    assert server.streamed == streamed_before + 1  # the provider was asked to stream
    chunks = [e for e in worker.events if e["event"] == "stream"
              and e["request_id"] == request_id]
    assert len([c for c in chunks if c["chunk"]]) >= 3
    assert "".join(c["chunk"] for c in chunks).strip() == response["result"]["outputs"][
        "answer"] == "streamed over real HTTP in several small pieces"
    assert chunks[-1]["last"] is True
    assert response["result"]["usage"]["completion_tokens"] > 0


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(("status", "error_class", "retryable"), [
    (429, "LMRateLimitError", True),
    (500, "LMServerError", True),
    (503, "LMServerError", True),
    (401, "LMAuthError", False),
    (400, "LMInvalidRequestError", False),
])
def test_http_errors_map_to_lm_error(worker: RecordingWorker, server: FakeOpenAI,
                                     engine: dict[str, Any], status: int, error_class: str,
                                     retryable: bool) -> None:
    sid = f"err-{status}-{bool(engine)}"
    configure(worker, server, sid, **engine)
    server.fail_next(1, status, f"simulated {status} for key {TEST_API_KEY}")
    error = worker.error("execute_program", {"session_id": sid, "program_id": "qa",
                                             "inputs": {"question": "q"}}, "lm_error")
    details = error["details"]
    assert error["retryable"] is retryable
    assert details["reason"] == "provider_error" and details["error_class"] == error_class
    assert details["status"] == status
    if engine:
        assert any(name.startswith("litellm.") for name in details["cause_chain"])
    assert TEST_API_KEY not in error["message"]


def test_dspy_retries_a_retryable_http_error(worker: RecordingWorker, server: FakeOpenAI) -> None:
    configure(worker, server, "http-retry", num_retries=2)
    server.fail_next(2, 429)
    before = len(server.requests)
    result = worker.ok("execute_program", {"session_id": "http-retry", "program_id": "qa",
                                           "inputs": {"question": "again?"}})
    assert result["outputs"]["answer"]
    assert len(server.requests) - before == 3


@pytest.mark.parametrize("engine", ENGINES)
def test_timeout_stops_a_slow_http_call(worker: RecordingWorker, server: FakeOpenAI,
                                        engine: dict[str, Any]) -> None:
    sid = f"slow-{bool(engine)}"
    configure(worker, server, sid, **engine)
    server.delay_next(30.0)
    started = time.monotonic()
    worker.error("execute_program", {"session_id": sid, "program_id": "qa",
                                     "inputs": {"question": "slow?"}}, "timeout", timeout_ms=300)
    assert time.monotonic() - started < 15  # answered long before the provider would be
    assert worker.ok("ping")["in_flight"] == 0


def test_key_from_environment_reaches_the_provider(worker: RecordingWorker,
                                                   server: FakeOpenAI) -> None:
    worker.ok("configure_lm", {"session_id": "http-env", "model": "openai/gpt-4o-mini",
                               "api_key_env": ENV_KEY_NAME, "api_base": server.base_url,
                               "num_retries": 0})
    worker.ok("create_program", {"session_id": "http-env", "program_id": "qa",
                                 "signature": "question -> answer"})
    worker.ok("execute_program", {"session_id": "http-env", "program_id": "qa",
                                  "inputs": {"question": "env key?"}})
    assert server.requests[-1]["headers"]["authorization"] == f"Bearer {ENV_API_KEY}"


def test_export_of_a_keyed_program_carries_no_key(worker: RecordingWorker,
                                                  server: FakeOpenAI) -> None:
    worker.ok("create_program", {"session_id": "http-export", "program_id": "qa",
                                 "signature": "question -> answer",
                                 "lm": {"model": "openai/gpt-4o-mini", "api_key": TEST_API_KEY,
                                        "api_base": server.base_url,
                                        "extra": {"seed": 7, "headers": {
                                            "Authorization": "Bearer x-secret-9"}}}})
    document = worker.ok("export_program", {"session_id": "http-export",
                                            "program_id": "qa"})["document"]
    assert TEST_API_KEY not in repr(document) and "x-secret-9" not in repr(document)
    assert document["lm"]["api_base"] == server.base_url
    assert document["lm"]["extra"] == {"seed": 7, "headers": {}}
    assert document["secrets_omitted"] == ["lm.api_key", "lm.extra.headers.Authorization"]
    described = worker.ok("get_program", {"session_id": "http-export", "program_id": "qa"})
    assert described["lm"]["extra"]["headers"]["Authorization"] == "<redacted>"


def test_history_never_shows_the_key(worker: RecordingWorker, server: FakeOpenAI) -> None:
    configure(worker, server, "history")
    worker.ok("execute_program", {"session_id": "history", "program_id": "qa",
                                  "inputs": {"question": f"is {TEST_API_KEY} my key?"}})
    (entry,) = worker.ok("get_history", {"session_id": "history", "n": 1})["entries"]
    assert "is <redacted> my key?" in entry["messages"][-1]["content"]
    assert entry["model"] == "openai/gpt-4o-mini" and entry["cost_usd"] > 0
    # (the module's last test scans every frame received and stderr for the key)


def test_zz_api_key_never_appears_in_replies_or_stderr(worker: RecordingWorker) -> None:
    worker.ok("get_stats")
    worker.assert_no_secret_leaked()
    assert "NON_LOCAL_NETWORK" not in worker.stderr_text()
