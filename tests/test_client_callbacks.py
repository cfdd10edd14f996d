"""Host functions in the Python host: `WorkerClient.register_function` answers callbacks.

First the sans-I/O part (`bridge.tools.callbacks`: declarations, answers from return
values and exceptions), then the client against real workers over real pipes: a ReAct
program calling two Python tools in order, a raising tool seen as an error observation,
a mock LM's generator, a slow tool the worker abandons (no reply sent, a late reply
harmless), and callbacks for functions the client does not serve reaching `receive`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import REPO

from dspy_bridge.protocol.host import Event, Response
from dspy_bridge.tools.callbacks import (
    MAX_ERROR_MESSAGE_CHARS,
    Callback,
    CallbackServer,
    HostFunction,
    HostFunctionError,
    answer,
)
from dspy_bridge.tools.client import RequestFailed, WorkerClient

# Bounds on waiting, never waits: the first DSPy command of a worker waits for DSPy to
# import, which on a loaded machine takes far longer than replay's default.
DSPY_TIMEOUT_S = 90.0
GATE_TIMEOUT_S = 60.0

ORDER_PARAMETERS = {
    "type": "object",
    "properties": {"order_id": {"type": "string"}},
    "required": ["order_id"],
}
PARCEL_PARAMETERS = {
    "type": "object",
    "properties": {"parcel_id": {"type": "string"}},
    "required": ["parcel_id"],
}


# ----- answers, sans-I/O -----


def event(function: str = "f", args: Any = None, callback_id: str = "cb-1") -> dict[str, Any]:
    return {"event": "callback", "callback_id": callback_id, "request_id": 7,
            "session_id": "default", "function": function, "purpose": "tool",
            "args": {} if args is None else args, "timeout_ms": 1000}


def test_a_declaration_holds_what_was_given() -> None:
    def fn() -> None:
        return None

    assert HostFunction("f", fn).declaration() == {"name": "f"}
    declared = HostFunction("f", fn, "Does f.", ORDER_PARAMETERS).declaration()
    assert declared == {"name": "f", "description": "Does f.", "parameters": ORDER_PARAMETERS}


def test_the_return_value_is_the_result_and_args_are_keywords() -> None:
    def add(a: int, b: int) -> int:
        return a + b

    reply = answer(HostFunction("add", add), Callback(event("add", {"a": 2, "b": 3})))
    assert reply == {"callback_id": "cb-1", "result": 5}


def test_pass_callback_gives_the_record_first() -> None:
    def who(callback: Callback, x: str) -> list[Any]:
        return [callback.callback_id, callback.request_id, callback.purpose, x]

    reply = answer(HostFunction("who", who, pass_callback=True),
                   Callback(event("who", {"x": "y"}, "cb-9")))
    assert reply["result"] == ["cb-9", 7, "tool", "y"]


def test_an_exception_answers_its_message() -> None:
    def broken(order_id: str) -> None:
        raise LookupError(f"no order {order_id}")

    reply = answer(HostFunction("f", broken), Callback(event(args={"order_id": "A-99"})))
    assert reply == {"callback_id": "cb-1",
                     "error": {"message": "no order A-99", "retryable": False}}
    # An exception without a message answers its class; wrong arguments are an error too.
    def silent() -> None:
        raise RuntimeError

    assert answer(HostFunction("f", silent), Callback(event()))["error"]["message"] == (
        "RuntimeError"
    )
    assert "error" in answer(HostFunction("f", silent), Callback(event(args={"x": 1})))
    assert "error" in answer(HostFunction("f", silent), Callback(event(args=[1])))


def test_host_function_error_chooses_type_and_retryable_and_text_is_bounded() -> None:
    def busy() -> None:
        raise HostFunctionError("try later", type="busy", retryable=True)

    reply = answer(HostFunction("f", busy), Callback(event()))
    assert reply["error"] == {"message": "try later", "type": "busy", "retryable": True}

    def verbose() -> None:
        raise HostFunctionError("x" * 20000, type="t" * 500)

    error = answer(HostFunction("f", verbose), Callback(event()))["error"]
    assert len(error["message"]) == MAX_ERROR_MESSAGE_CHARS and len(error["type"]) == 100


def test_settled_callbacks_are_kept_only_up_to_a_bound_and_open_ones_always() -> None:
    """A long-lived client serves callbacks without end: its records must not grow with
    them. Every callback not yet settled is kept; of the settled ones, the latest."""
    sent: list[dict[str, Any]] = []
    replied = threading.Condition()

    def send(request: dict[str, Any]) -> None:
        with replied:
            sent.append(request)
            replied.notify_all()

    server = CallbackServer(send, keep_settled=3)
    server.register(HostFunction("double", lambda n: 2 * n))

    def callback(n: int) -> Callback:
        event = {"event": "callback", "callback_id": f"cb-{n}", "request_id": 1,
                 "function": "double", "purpose": "tool", "args": {"n": n}}
        assert server.take(Event("callback", event))
        record = server.callback(f"cb-{n}")
        assert record is not None
        return record

    def settle(record: Callback) -> None:
        with replied:
            assert replied.wait_for(lambda: any(r["id"] == record.reply_id for r in sent), 30)
        reply = {"id": record.reply_id, "success": True, "result": {"accepted": True}}
        assert server.take(Response(record.reply_id, True, reply["result"], None, reply))
        assert record.wait(30)

    open_one = callback(0)  # never settled
    for n in range(1, 8):
        settle(callback(n))
    callback(8)  # the newest: its reply may still be on its way
    kept = [record.callback_id for record in server.callbacks]
    assert "cb-0" in kept and "cb-8" in kept
    assert [cid for cid in kept if cid not in {"cb-0", "cb-8"}] == ["cb-5", "cb-6", "cb-7"]
    assert not open_one.settled


def test_a_result_msgpack_cannot_carry_is_an_error_answer() -> None:
    def odd() -> object:
        return {1, 2}

    error = answer(HostFunction("odd", odd), Callback(event("odd")))["error"]
    assert "result of odd cannot be sent" in error["message"]


# ----- against a real worker -----


@pytest.fixture
def client() -> Iterator[WorkerClient]:
    with WorkerClient([], cwd=REPO, stderr_lines=None) as worker:
        worker.wait_event("ready", DSPY_TIMEOUT_S)
        yield worker


def react_step(thought: str, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    """One answer of the mock LM to a ReAct step."""
    return {"next_thought": thought, "next_tool_name": tool, "next_tool_args": args}


def make_agent(client: WorkerClient, tools: list[str], answers: list[dict[str, Any]],
               session_id: str = "default", program_id: str = "agent") -> None:
    client.call("create_program", {
        "session_id": session_id, "program_id": program_id,
        "signature": "question -> answer", "program_type": "react",
        "options": {"tools": tools, "max_iters": 5},
        "lm": {"model": "mock/agent", "extra": {"sequence": answers}},
    }, DSPY_TIMEOUT_S)


def run(client: WorkerClient, question: str, session_id: str = "default",
        **envelope: Any) -> Any:
    return client.call("execute_program", {
        "session_id": session_id, "program_id": "agent", "inputs": {"question": question},
    }, DSPY_TIMEOUT_S, **envelope)


def settled(client: WorkerClient) -> list[Callback]:
    records = client.callbacks
    for record in records:
        assert record.wait(GATE_TIMEOUT_S), record
    return records


def test_a_react_run_calls_two_python_tools_in_order(client: WorkerClient) -> None:
    calls: list[tuple[str, str]] = []
    threads: list[str] = []

    def lookup_order(order_id: str) -> dict[str, Any]:
        calls.append(("lookup_order", order_id))
        threads.append(threading.current_thread().name)
        return {"status": "shipped", "parcel": "P-9"}

    def track_parcel(parcel_id: str) -> str:
        calls.append(("track_parcel", parcel_id))
        return "out for delivery"

    client.register_function("lookup_order", lookup_order,
                             description="The status of an order.", parameters=ORDER_PARAMETERS)
    client.register_function("track_parcel", track_parcel,
                             description="Where a parcel is.", parameters=PARCEL_PARAMETERS)
    registered = client.register_tools("acme", timeout=DSPY_TIMEOUT_S)
    assert registered["registered"] == ["lookup_order", "track_parcel"]
    listed = client.call("list_tools", {"session_id": "acme"}, DSPY_TIMEOUT_S)["tools"]
    assert [tool["name"] for tool in listed] == ["lookup_order", "track_parcel"]
    assert listed[0]["description"] == "The status of an order."
    make_agent(client, ["lookup_order", "track_parcel"], [
        react_step("Look the order up.", "lookup_order", {"order_id": "A-17"}),
        react_step("Track its parcel.", "track_parcel", {"parcel_id": "P-9"}),
        react_step("I know enough.", "finish", {}),
        {"reasoning": "It shipped and is out for delivery.", "answer": "Out for delivery."},
    ], session_id="acme")

    result = run(client, "Where is order A-17?", session_id="acme")

    assert calls == [("lookup_order", "A-17"), ("track_parcel", "P-9")]
    assert threads[0].startswith("callback-")  # not the reader thread
    assert result["outputs"]["answer"] == "Out for delivery."
    trajectory = result["trajectory"]
    assert [step["tool_name"] for step in trajectory] == [
        "lookup_order", "track_parcel", "finish"]
    assert trajectory[0]["tool_args"] == {"order_id": "A-17"}
    assert trajectory[0]["observation"] == {"status": "shipped", "parcel": "P-9"}
    assert trajectory[1]["observation"] == "out for delivery"
    records = settled(client)
    assert [record.function for record in records] == ["lookup_order", "track_parcel"]
    for record in records:
        assert record.purpose == "tool" and record.session_id == "acme"
        assert record.accepted is True and record.abandon_reason is None
    # The callbacks and the replies' responses were the client's: nothing else is left.
    assert not [m for m in client.backlog if m.get("event") != "progress"]


def test_a_raising_python_tool_is_an_error_observation(client: WorkerClient) -> None:
    def lookup_order(order_id: str) -> None:
        raise LookupError(f"no order {order_id}")

    client.register_function("lookup_order", lookup_order, parameters=ORDER_PARAMETERS)
    client.register_tools(timeout=DSPY_TIMEOUT_S)
    make_agent(client, ["lookup_order"], [
        react_step("Look it up.", "lookup_order", {"order_id": "A-99"}),
        react_step("It does not exist.", "finish", {}),
        {"reasoning": "No such order.", "answer": "There is no order A-99."},
    ])

    result = run(client, "Where is order A-99?")

    assert result["trajectory"][0]["observation"] == (
        "Execution error in lookup_order: no order A-99"
    )
    assert result["outputs"]["answer"] == "There is no order A-99."
    (record,) = settled(client)
    assert record.reply == {"callback_id": record.callback_id,
                            "error": {"message": "no order A-99", "retryable": False}}
    assert record.accepted is True


def test_a_python_generator_answers_a_mock_lm(client: WorkerClient) -> None:
    def generate(model: str, inputs: dict[str, Any], outputs: list[str],
                 **prompt: Any) -> dict[str, Any]:  # and instructions, demos
        return {"answer": f"{model}: {str(inputs['question']).upper()} ({','.join(outputs)})"}

    client.register_function("generate", generate)
    client.register_tools(timeout=DSPY_TIMEOUT_S)
    client.call("create_program", {
        "program_id": "gen", "signature": "question -> answer",
        "lm": {"model": "mock/gen", "extra": {"generator": "generate"}},
    }, DSPY_TIMEOUT_S)
    ran = client.call("execute_program", {"program_id": "gen",
                                          "inputs": {"question": "hello"}}, DSPY_TIMEOUT_S)
    assert ran["outputs"]["answer"] == "mock/gen: HELLO (answer)"
    (record,) = settled(client)
    assert record.purpose == "mock" and record.accepted is True

    # A generator that raises fails the request with host_error, as the host said.
    def refuse(model: str, inputs: dict[str, Any], outputs: list[str], **prompt: Any) -> None:
        raise HostFunctionError("quota used up", type="quota", retryable=True)

    client.register_function("generate", refuse)
    with pytest.raises(RequestFailed) as failed:
        client.call("execute_program", {"program_id": "gen",
                                        "inputs": {"question": "again"}}, DSPY_TIMEOUT_S)
    error = failed.value.error
    assert error["type"] == "host_error" and error["retryable"] is True
    assert error["details"]["reason"] == "error"
    assert error["details"]["host_error_type"] == "quota"


def test_a_slow_tool_is_abandoned_and_sends_no_late_reply(client: WorkerClient) -> None:
    gate = threading.Event()
    started = threading.Event()

    def lookup_order(callback: Callback, order_id: str) -> str:
        started.set()
        # Released by the test once the worker has given up (never a sleep).
        gate.wait(GATE_TIMEOUT_S)
        return "too late"

    client.register_function("lookup_order", lookup_order, parameters=ORDER_PARAMETERS,
                             pass_callback=True)
    client.register_tools(timeout=DSPY_TIMEOUT_S)
    make_agent(client, ["lookup_order"], [
        react_step("Look it up.", "lookup_order", {"order_id": "A-17"}),
        react_step("Done.", "finish", {}),
        {"reasoning": "r", "answer": "a"},
    ])
    # DSPy is loaded once the program exists: the request's own timeout is all callback.
    with pytest.raises(RequestFailed) as failed:
        run(client, "Where is order A-17?", timeout_ms=1500)
    assert failed.value.error["type"] == "timeout"
    assert started.wait(GATE_TIMEOUT_S)
    # The protocol sends a request's callback_abandoned before its response.
    (record,) = client.callbacks
    assert record.abandoned.is_set() and record.abandon_reason == "timeout"
    gate.set()
    assert record.wait(GATE_TIMEOUT_S)
    assert record.skipped and record.reply is None and record.response is None

    # A reply that comes after all is harmless: not accepted, and the worker goes on.
    late = client.call("callback_reply", {"callback_id": record.callback_id, "result": "x"})
    assert late == {"accepted": False, "reason": "not_waiting"}
    assert client.call("ping")["in_flight"] == 0


def test_a_tool_past_the_callback_timeout_is_an_observation_and_the_agent_goes_on() -> None:
    gate = threading.Event()

    def lookup_order(order_id: str) -> str:
        gate.wait(GATE_TIMEOUT_S)
        return "too late"

    with WorkerClient(["--callback-timeout-ms", "300"], cwd=REPO) as client:
        client.register_function("lookup_order", lookup_order, parameters=ORDER_PARAMETERS)
        client.register_tools(timeout=DSPY_TIMEOUT_S)
        make_agent(client, ["lookup_order"], [
            react_step("Look it up.", "lookup_order", {"order_id": "A-17"}),
            react_step("No answer; give up.", "finish", {}),
            {"reasoning": "The lookup timed out.", "answer": "Unknown."},
        ])
        try:
            result = run(client, "Where is order A-17?")
        finally:
            gate.set()
        observation = result["trajectory"][0]["observation"]
        assert observation.startswith("Execution error in lookup_order:")
        assert "300 ms" in observation
        assert result["outputs"]["answer"] == "Unknown."
        (record,) = settled(client)
        assert record.abandon_reason == "callback_timeout" and record.skipped


def test_callbacks_for_functions_the_client_does_not_serve_reach_receive(
    client: WorkerClient,
) -> None:
    client.register_function("other", lambda: "unused")
    client.call("register_tools", {"tools": [{"name": "lookup_order",
                                              "parameters": ORDER_PARAMETERS}]},
                DSPY_TIMEOUT_S)
    make_agent(client, ["lookup_order"], [
        react_step("Look it up.", "lookup_order", {"order_id": "A-17"}),
        react_step("Done.", "finish", {}),
        {"reasoning": "r", "answer": "shipped"},
    ])
    request_id = client.new_id()
    client.send({"id": request_id, "command": "execute_program",
                 "args": {"program_id": "agent", "inputs": {"question": "q"}}})
    callback = client.wait_event("callback", DSPY_TIMEOUT_S)
    assert callback["function"] == "lookup_order" and callback["request_id"] == request_id
    assert client.callbacks == []
    reply = client.call("callback_reply", {"callback_id": callback["callback_id"],
                                           "result": "shipped"})
    assert reply == {"accepted": True}
    response = client.response(request_id, DSPY_TIMEOUT_S)
    assert response["success"] and response["result"]["trajectory"][0]["observation"] == "shipped"
