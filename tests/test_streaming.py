"""execute_program with `stream: true` on real workers and the mock LM: the output fields
arrive as `stream` events, in order, before the one reply with the full outputs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.engine_support import RecordingWorker
from tests.host_support import Host

ANSWER = "The quick brown fox jumps over the lazy dog, then naps in the sun."
REASONING = "Foxes are quick and dogs are lazy, as everyone knows."


@pytest.fixture
def worker() -> Iterator[RecordingWorker]:
    process = RecordingWorker()
    yield process
    process.close()


def streamed(worker: RecordingWorker, request_id: Any) -> tuple[dict[str, Any], list[Any]]:
    """The reply and the stream events before it (none may come after it)."""
    response = worker.response(request_id, timeout=60)
    events = [e for e in worker.events if e.get("request_id") == request_id
              and e["event"] in {"stream", "stream_status"}]
    return response, events


def text_of(events: list[dict[str, Any]], field: str) -> str:
    return "".join(e["chunk"] for e in events if e["event"] == "stream" and e["field"] == field)


@pytest.mark.parametrize("program_type", ["predict", "chain_of_thought"])
def test_the_fields_stream_in_chunks_before_the_reply(worker: RecordingWorker,
                                                      program_type: str) -> None:
    worker.ok("configure_lm", {"session_id": "s", "model": "mock", "latency_ms": 100,
                               "cache": False,
                               "default": {"reasoning": REASONING, "answer": ANSWER}})
    worker.ok("create_program", {"session_id": "s", "program_id": "p",
                                 "signature": "question -> answer", "program_type": program_type})
    request_id = worker.start("execute_program", {"session_id": "s", "program_id": "p",
                                                  "inputs": {"question": "q"}, "stream": True})
    response, events = streamed(worker, request_id)
    assert response["success"], response
    outputs = response["result"]["outputs"]
    answer_chunks = [e for e in events if e["event"] == "stream" and e["field"] == "answer"]
    assert len([e for e in answer_chunks if e["chunk"]]) >= 4
    assert text_of(events, "answer") == outputs["answer"] == ANSWER
    assert [e["last"] for e in answer_chunks] == [False] * (len(answer_chunks) - 1) + [True]
    if program_type == "chain_of_thought":
        assert text_of(events, "reasoning") == outputs["reasoning"] == REASONING
        fields = [e["field"] for e in events if e["event"] == "stream"]
        assert fields.index("answer") > max(i for i, f in enumerate(fields) if f == "reasoning")
    else:
        assert {e["field"] for e in events if e["event"] == "stream"} == {"answer"}


def test_a_cached_answer_comes_whole(worker: RecordingWorker) -> None:
    worker.ok("configure_lm", {"session_id": "c", "model": "mock", "default": ANSWER})
    worker.ok("create_program", {"session_id": "c", "program_id": "p",
                                 "signature": "question -> answer"})
    args = {"session_id": "c", "program_id": "p", "inputs": {"question": "q"}, "stream": True}
    first, first_events = streamed(worker, worker.start("execute_program", args))
    second, second_events = streamed(worker, worker.start("execute_program", args))
    assert first_events and not second_events  # the cache answered the second
    assert second["result"]["usage"]["cached_requests"] == 1
    assert first["result"]["outputs"] == second["result"]["outputs"] == {"answer": ANSWER}


def test_a_react_agent_streams_its_answer_and_says_what_it_does(
    worker: RecordingWorker,
) -> None:
    worker.ok("configure_lm", {"session_id": "r", "model": "mock", "cache": False,
                               "sequence": [
        {"next_thought": "Look it up.", "next_tool_name": "lookup",
         "next_tool_args": {"key": "fox"}},
        {"next_thought": "Done.", "next_tool_name": "finish", "next_tool_args": {}},
        {"reasoning": REASONING, "answer": ANSWER}]})
    worker.ok("register_tools", {"session_id": "r", "tools": [{"name": "lookup"}]})
    worker.ok("create_program", {"session_id": "r", "program_id": "agent",
                                 "signature": "question -> answer", "program_type": "react",
                                 "options": {"tools": ["lookup"]}})
    host = Host(worker, {"lookup": lambda args: "a quick animal"})
    request_id = worker.start("execute_program", {"session_id": "r", "program_id": "agent",
                                                  "inputs": {"question": "fox?"},
                                                  "stream": True})
    response = host.until(request_id)
    assert response["success"], response
    events = [e for e in worker.events if e.get("request_id") == request_id]
    assert text_of(events, "answer") == ANSWER
    statuses = [e["message"] for e in events if e["event"] == "stream_status"]
    assert any("lookup" in message for message in statuses), statuses


def test_cancel_stops_a_stream(worker: RecordingWorker) -> None:
    worker.ok("configure_lm", {"session_id": "x", "model": "mock", "latency_ms": 20_000,
                               "cache": False, "default": ANSWER})
    worker.ok("create_program", {"session_id": "x", "program_id": "p",
                                 "signature": "question -> answer"})
    request_id = worker.start("execute_program", {"session_id": "x", "program_id": "p",
                                                  "inputs": {"question": "q"}, "stream": True})
    while not any(e.get("request_id") == request_id for e in worker.events):
        worker.read_message(60)  # the first chunk: the stream is under way
    assert worker.ok("cancel", {"request_id": request_id}) == {"cancelled": True}
    assert worker.response(request_id)["error"]["type"] == "cancelled"
    assert worker.ok("ping")["status"] == "ok"
