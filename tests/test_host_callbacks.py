"""Host functions and callbacks (PROTOCOL.md "Host functions and callbacks") on real
workers over real pipes: ReAct tools, best_of_n/refine rewards and the mock's generator
calling back into the host, and every way a host can fail them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import WorkerProcess
from tests.engine_support import RecordingWorker
from tests.host_support import Host, HostError

LOOKUP = {"name": "lookup_order", "description": "Find an order by its id",
          "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}},
                         "required": ["order_id"], "additionalProperties": False}}
ETA = {"name": "eta", "description": "Delivery estimate for a city",
       "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}


def step(thought: str, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"next_thought": thought, "next_tool_name": tool, "next_tool_args": args}


FINISH = step("I know enough.", "finish", {})


@pytest.fixture
def worker() -> Iterator[RecordingWorker]:
    process = RecordingWorker("--enable-test-commands")
    yield process
    process.close()


def agent(worker: RecordingWorker, session: str, sequence: list[Any],
          tools: list[dict[str, Any]] | None = None, **options: Any) -> None:
    """A session with a scripted mock, declared tools, and a react program `agent`."""
    declared = tools if tools is not None else [LOOKUP, ETA]
    worker.ok("configure_lm", {"session_id": session, "model": "mock", "num_retries": 0,
                               "sequence": sequence})
    worker.ok("register_tools", {"session_id": session, "tools": declared})
    worker.ok("create_program", {
        "session_id": session, "program_id": "agent", "signature": "question -> answer",
        "program_type": "react",
        "options": {"tools": [tool["name"] for tool in declared], **options}})


def ask(session: str, question: str = "Where is order A-17?") -> dict[str, Any]:
    return {"session_id": session, "program_id": "agent", "inputs": {"question": question}}


# ----- ReAct with host tools -----


def test_a_react_agent_calls_two_host_tools_in_order(worker: RecordingWorker) -> None:
    agent(worker, "react", [
        step("Look the order up.", "lookup_order", {"order_id": "A-17"}),
        step("Where does it go?", "eta", {"city": "Oslo"}),
        FINISH,
        {"reasoning": "It shipped to Oslo.", "answer": "Shipped; arrives Monday."},
    ])
    calls: list[tuple[str, Any]] = []

    def lookup(args: Any) -> Any:
        calls.append(("lookup_order", args))
        return {"status": "shipped", "city": "Oslo"}

    def eta(args: Any) -> Any:
        calls.append(("eta", args))
        return "Monday"

    host = Host(worker, {"lookup_order": lookup, "eta": eta})
    request_id = worker.start("execute_program", ask("react"), timeout_ms=60_000)
    response = host.until(request_id)
    assert response["success"], response
    result = response["result"]
    assert calls == [("lookup_order", {"order_id": "A-17"}), ("eta", {"city": "Oslo"})]
    assert result["outputs"] == {"reasoning": "It shipped to Oslo.",
                                 "answer": "Shipped; arrives Monday."}
    assert result["trajectory"] == [
        {"thought": "Look the order up.", "tool_name": "lookup_order",
         "tool_args": {"order_id": "A-17"}, "observation": {"status": "shipped", "city": "Oslo"}},
        {"thought": "Where does it go?", "tool_name": "eta", "tool_args": {"city": "Oslo"},
         "observation": "Monday"},
        {"thought": "I know enough.", "tool_name": "finish", "tool_args": {},
         "observation": "Completed."},
    ]
    first, second = host.callbacks
    assert first["callback_id"] != second["callback_id"]
    for callback in host.callbacks:
        assert callback["request_id"] == request_id
        assert callback["session_id"] == "react" and callback["purpose"] == "tool"
        assert 0 < callback["timeout_ms"] <= 60_000
        assert set(callback) == {"event", "callback_id", "request_id", "session_id",
                                 "function", "purpose", "args", "timeout_ms"}
    assert result["usage"]["requests"] == 4  # three steps and the extraction


def test_the_lm_sees_the_declared_description_and_schema(worker: RecordingWorker) -> None:
    agent(worker, "described", [FINISH, {"answer": "ok"}])
    program = worker.ok("get_program", {"session_id": "described", "program_id": "agent"})
    assert program["program_type"] == "react"
    assert program["options"] == {"tools": ["lookup_order", "eta"], "max_iters": 20}
    assert "Find an order by its id" in program["instructions"]
    assert "order_id" in program["instructions"]


def test_a_host_error_becomes_the_observation_and_the_agent_goes_on(
    worker: RecordingWorker,
) -> None:
    agent(worker, "errors", [
        step("Look it up.", "lookup_order", {"order_id": "A-99"}),
        FINISH,
        {"answer": "No such order."},
    ])

    def lookup(args: Any) -> Any:
        raise HostError(f"no order {args['order_id']}")

    response = Host(worker, {"lookup_order": lookup}).run("execute_program", ask("errors"))
    assert response["success"], response
    steps = response["result"]["trajectory"]
    assert steps[0]["observation"] == "Execution error in lookup_order: no order A-99"
    assert response["result"]["outputs"]["answer"] == "No such order."


def test_arguments_against_the_schema_and_undeclared_tools_never_reach_the_host(
    worker: RecordingWorker,
) -> None:
    agent(worker, "refused", [
        step("Wrong type.", "lookup_order", {"order_id": 17}),
        step("Extra argument.", "lookup_order", {"order_id": "A", "force": True}),
        step("Now the tool is gone.", "eta", {"city": "Oslo"}),
        FINISH,
        {"answer": "gave up"},
    ])
    host = Host(worker, {})
    worker.ok("delete_tool", {"session_id": "refused", "name": "eta"})
    response = host.run("execute_program", ask("refused"))
    assert response["success"], response
    observations = [s["observation"] for s in response["result"]["trajectory"]]
    assert observations[0].startswith("Execution error in lookup_order: ")
    assert "17 is not of type 'string'" in observations[0]
    assert observations[1].startswith("Execution error in lookup_order: invalid arguments")
    assert observations[2] == ("Execution error in eta: no host function 'eta' is declared "
                               "in session 'refused'")
    assert host.callbacks == []  # the host was never asked


def test_a_timeout_mid_callback_abandons_it_before_the_reply(worker: RecordingWorker) -> None:
    agent(worker, "slow", [step("Look it up.", "lookup_order", {"order_id": "A"}), FINISH,
                           {"answer": "x"}])
    host = Host(worker, {})  # never answers by itself
    request_id = worker.start("execute_program", ask("slow"), timeout_ms=1500)
    response = host.until(request_id)
    assert response["error"]["type"] == "timeout"
    (callback,) = host.callbacks
    (abandoned,) = host.abandoned
    assert abandoned == {"event": "callback_abandoned", "callback_id": callback["callback_id"],
                         "request_id": request_id, "reason": "timeout"}
    assert host.order.index(f"abandoned:{callback['callback_id']}") < host.order.index(
        f"response:{request_id}")
    late = worker.call("callback_reply", {"callback_id": callback["callback_id"],
                                          "result": "too late"})
    assert late == {"accepted": False, "reason": "not_waiting"}
    assert worker.call("ping")["status"] == "ok"


def test_cancel_mid_callback_abandons_it(worker: RecordingWorker) -> None:
    agent(worker, "cancel", [step("Look it up.", "lookup_order", {"order_id": "A"}), FINISH,
                             {"answer": "x"}])
    host = Host(worker, {})
    request_id = worker.start("execute_program", ask("cancel"))
    while not host.callbacks:
        host.pump()
    assert worker.call("cancel", {"request_id": request_id}) == {"cancelled": True}
    response = host.until(request_id)
    assert response["error"]["type"] == "cancelled"
    assert [a["reason"] for a in host.abandoned] == ["cancelled"]


def test_the_callback_timeout_flag_bounds_a_wait_and_the_agent_goes_on(
    spawn: Callable[..., WorkerProcess],
) -> None:
    worker = spawn("--callback-timeout-ms", "300")
    worker.call("configure_lm", {"session_id": "s", "model": "mock", "sequence": [
        step("Look it up.", "lookup_order", {"order_id": "A"}), FINISH, {"answer": "late"}]})
    worker.call("register_tools", {"session_id": "s", "tools": [LOOKUP]})
    worker.call("create_program", {"session_id": "s", "program_id": "agent",
                                   "signature": "question -> answer", "program_type": "react",
                                   "options": {"tools": ["lookup_order"]}})
    host = Host(worker, {})
    response = host.run("execute_program", ask("s"))
    assert response["success"], response
    (callback,) = host.callbacks
    assert callback["timeout_ms"] == 300
    assert [a["reason"] for a in host.abandoned] == ["callback_timeout"]
    assert response["result"]["trajectory"][0]["observation"] == (
        "Execution error in lookup_order: the host did not answer within 300 ms")


def test_many_agents_wait_on_a_slow_host_tool_while_ping_answers(
    worker: RecordingWorker,
) -> None:
    count = 200
    worker.ok("configure_lm", {"session_id": "many", "model": "mock",
                               "responses": {"go": step("Ask.", "lookup_order",
                                                        {"order_id": "A"})},
                               "default": {"answer": "done"}})
    worker.ok("register_tools", {"session_id": "many", "tools": [LOOKUP]})
    worker.ok("create_program", {"session_id": "many", "program_id": "agent",
                                 "signature": "question -> answer", "program_type": "react",
                                 "options": {"tools": ["lookup_order"], "max_iters": 1}})
    host = Host(worker, {})
    ids = [worker.start("execute_program", ask("many", "go")) for _ in range(count)]
    while len(host.callbacks) < count:  # every request waits on the host at once
        host.pump()
    ping = worker.call("ping")  # answered while 200 callbacks are outstanding
    assert ping["status"] == "ok" and ping["in_flight"] == count
    assert worker.call("get_stats")["callbacks"] == {"waiting": count, "issued": count}
    for callback in host.callbacks:
        host.answer(callback, lambda args: "shipped")
    for request_id in ids:
        response = host.until(request_id)
        assert response["success"], response
        assert response["result"]["trajectory"][0]["observation"] == "shipped"
    assert worker.call("get_stats")["callbacks"] == {"waiting": 0, "issued": count}


# ----- callback_reply -----


def test_callback_reply_refuses_what_it_cannot_take(worker: RecordingWorker) -> None:
    for never in ("cb-1", "cb-0", "cb-01", "nope", "cb-", "cb-\u0661"):
        worker.error("callback_reply", {"callback_id": never, "result": 1}, "not_found")
    worker.error("callback_reply", {"callback_id": "cb-1"}, "invalid_args")
    worker.error("callback_reply", {"callback_id": "cb-1", "result": 1,
                                    "error": {"message": "x"}}, "invalid_args")
    assert "error.message" in worker.invalid_fields(
        "callback_reply", {"callback_id": "cb-1", "error": {"message": "x" * 8193}})
    assert "error.bogus" in worker.invalid_fields(
        "callback_reply", {"callback_id": "cb-1", "error": {"message": "x", "bogus": 1}})


@pytest.mark.parametrize("result", [[1, 2, 3], [], [{"a": b"\x00"}], 7, 1.5, True, None,
                                    {"nested": [[1], {"x": None}]}, b"\x01\x02", "text"])
def test_a_tool_result_of_any_shape_is_the_observation(worker: RecordingWorker,
                                                       result: Any) -> None:
    agent(worker, "shapes", [step("Look.", "lookup_order", {"order_id": "A"}), FINISH,
                             {"answer": "ok"}])
    response = Host(worker, {"lookup_order": lambda args: result}).run(
        "execute_program", ask("shapes"))
    assert response["success"], response
    assert response["result"]["trajectory"][0]["observation"] == result


def test_a_malformed_reply_leaves_the_callback_waiting(worker: RecordingWorker) -> None:
    agent(worker, "malformed", [step("Look.", "lookup_order", {"order_id": "A"}), FINISH,
                                {"answer": "ok"}])
    host = Host(worker, {})
    request_id = worker.start("execute_program", ask("malformed"))
    while not host.callbacks:
        host.pump()
    callback_id = host.callbacks[0]["callback_id"]
    worker.error("callback_reply", {"callback_id": callback_id}, "invalid_args")
    assert worker.call("callback_reply", {"callback_id": callback_id, "result": None}) == {
        "accepted": True}
    response = host.until(request_id)
    assert response["result"]["trajectory"][0]["observation"] is None


# ----- declaring host functions -----


def test_register_list_and_delete_tools(worker: RecordingWorker) -> None:
    result = worker.ok("register_tools", {"session_id": "decl", "tools": [LOOKUP, ETA]})
    assert result == {"session_id": "decl", "registered": ["lookup_order", "eta"], "tools": 2}
    again = worker.ok("register_tools", {"session_id": "decl",
                                         "tools": [{"name": "eta", "description": "new"}]})
    assert again["tools"] == 2
    listed = worker.ok("list_tools", {"session_id": "decl"})["tools"]
    assert listed == [LOOKUP, {"name": "eta", "description": "new",
                               "parameters": {"type": "object", "properties": {}}}]
    sessions = {s["session_id"]: s for s in worker.ok("list_sessions")["sessions"]}
    assert sessions["decl"]["tools"] == 2 and sessions["decl"]["stored_bytes"] > 0
    assert worker.ok("delete_tool", {"session_id": "decl", "name": "eta"}) == {
        "deleted": True, "session_id": "decl", "name": "eta"}
    worker.error("delete_tool", {"session_id": "decl", "name": "eta"}, "not_found")
    worker.error("delete_tool", {"session_id": "nobody", "name": "eta"}, "not_found")
    assert worker.ok("list_tools", {"session_id": "nobody"})["tools"] == []
    worker.ok("end_session", {"session_id": "decl"})
    assert worker.ok("list_tools", {"session_id": "decl"})["tools"] == []


@pytest.mark.parametrize(("tool", "field"), [
    ({"name": "finish"}, "tools.0.name"),
    ({"name": "1abc"}, "tools.0.name"),
    ({"name": "has space"}, "tools.0.name"),
    ({"name": "x" * 65}, "tools.0.name"),
    ({"name": "ok", "description": "d" * 8193}, "tools.0.description"),
    ({"name": "ok", "parameters": {"type": "string"}}, "tools.0.parameters"),
    ({"name": "ok", "parameters": {"properties": {}}}, "tools.0.parameters"),
    ({"name": "ok", "parameters": {"type": "object", "properties": {"a": {"type": 5}}}},
     "tools.0.parameters"),
    ({"name": "ok", "parameters": {"type": "object", "properties": {
        "a": {"type": "string", "pattern": "(a+)+$"}}}}, "tools.0.parameters"),
    ({"name": "ok", "parameters": {"type": "object", "patternProperties": {}}},
     "tools.0.parameters"),
    ({"name": "ok", "parameters": {"type": "object", "properties": {
        "a": {"$ref": "https://example.invalid/schema.json"}}}}, "tools.0.parameters"),
    ({"name": "ok", "bogus": 1}, "tools.0.bogus"),
    ({"description": "no name"}, "tools.0.name"),
])
def test_bad_declarations_name_the_field(worker: RecordingWorker, tool: dict[str, Any],
                                         field: str) -> None:
    assert field in worker.invalid_fields("register_tools", {"session_id": "bad",
                                                             "tools": [tool]})
    assert worker.ok("list_tools", {"session_id": "bad"})["tools"] == []


def test_declarations_are_all_or_nothing_and_bounded(worker: RecordingWorker) -> None:
    assert "tools.1.name" in worker.invalid_fields("register_tools", {
        "session_id": "batch", "tools": [{"name": "a"}, {"name": "a"}]})
    assert "tools.1.parameters" in worker.invalid_fields("register_tools", {
        "session_id": "batch", "tools": [{"name": "a"}, {"name": "b", "parameters": {}}]})
    assert worker.ok("list_tools", {"session_id": "batch"})["tools"] == []
    worker.ok("register_tools", {"session_id": "batch",
                                 "tools": [{"name": f"t{i}"} for i in range(100)]})
    error = worker.error("register_tools", {
        "session_id": "batch", "tools": [{"name": f"u{i}"} for i in range(29)]},
        "limit_exceeded")
    assert error["details"]["limit"] == "max_tools"
    assert len(worker.ok("list_tools", {"session_id": "batch"})["tools"]) == 100
    error = worker.error("register_tools", {
        "session_id": "batch-2", "tools": [{"name": f"v{i}"} for i in range(129)]},
        "limit_exceeded")
    assert error["details"]["limit"] == "max_tools"


def test_declarations_count_to_the_session_bytes(spawn: Callable[..., WorkerProcess]) -> None:
    worker = spawn("--max-session-bytes", "4096")
    response = worker.request("register_tools", {"session_id": "small", "tools": [
        {"name": "big", "description": "d" * 5000}]})
    assert response["error"]["type"] == "limit_exceeded"
    assert response["error"]["details"]["limit"] == "max_session_bytes"


def test_react_programs_need_declared_tools_and_their_own_names(
    worker: RecordingWorker,
) -> None:
    worker.ok("register_tools", {"session_id": "rp", "tools": [LOOKUP]})
    base = {"session_id": "rp", "signature": "question -> answer", "program_type": "react"}
    assert "options.tools.0" in worker.invalid_fields(
        "create_program", {**base, "options": {"tools": ["nope"]}})
    assert "options.tools" in worker.invalid_fields("create_program", {**base})
    assert "options.tools" in worker.invalid_fields(
        "create_program", {**base, "options": {"tools": ["lookup_order", "lookup_order"]}})
    assert "options.max_iters" in worker.invalid_fields(
        "create_program", {**base, "options": {"tools": ["lookup_order"], "max_iters": 0}})
    assert "options.bogus" in worker.invalid_fields(
        "create_program", {"session_id": "rp", "signature": "q -> a", "options": {"bogus": 1}})
    assert "demos" in worker.invalid_fields("create_program", {
        **base, "options": {"tools": ["lookup_order"]}, "demos": [{"question": "q"}]})
    assert "signature" in worker.invalid_fields("create_program", {
        **base, "signature": "question, trajectory -> answer",
        "options": {"tools": ["lookup_order"]}})


def test_a_react_program_exports_and_imports_with_its_tools(worker: RecordingWorker) -> None:
    agent(worker, "exp", [FINISH, {"answer": "x"}])
    document = worker.ok("export_program", {"session_id": "exp", "program_id": "agent"})[
        "document"]
    assert document["options"] == {"tools": ["lookup_order", "eta"], "max_iters": 20}
    assert "document.options.tools.0" in worker.invalid_fields(
        "import_program", {"session_id": "bare", "document": document})
    worker.ok("register_tools", {"session_id": "bare", "tools": [LOOKUP, ETA]})
    imported = worker.ok("import_program", {"session_id": "bare", "document": document})
    assert imported["program_type"] == "react" and imported["options"] == document["options"]


# ----- best_of_n and refine -----


def attempts(worker: RecordingWorker, session: str, program_type: str, answers: list[Any],
             reward: dict[str, Any], **options: Any) -> None:
    worker.ok("configure_lm", {"session_id": session, "model": "mock", "num_retries": 0,
                               "sequence": answers})
    worker.ok("register_tools", {"session_id": session, "tools": [{"name": "score"}]})
    worker.ok("create_program", {
        "session_id": session, "program_id": "p", "signature": "question -> answer",
        "program_type": program_type, "options": {"n": 3, "reward": reward, **options}})


def run_p(session: str, **more: Any) -> dict[str, Any]:
    return {"session_id": session, "program_id": "p", "inputs": {"question": "Capital?"},
            **more}


def test_best_of_n_with_a_built_in_reward(worker: RecordingWorker) -> None:
    attempts(worker, "bon", "best_of_n", ["Lyon", "Paris", "Nice"],
             {"metric": "exact_match", "expected": "Paris"})
    result = worker.ok("execute_program", run_p("bon"))
    assert result["outputs"] == {"answer": "Paris"}
    assert result["usage"]["requests"] == 2  # the second attempt reached the threshold


def test_best_of_n_takes_the_expected_value_from_the_call(worker: RecordingWorker) -> None:
    attempts(worker, "bon-call", "best_of_n", ["Lyon", "Nice", "Paris"],
             {"metric": "exact_match"})
    result = worker.ok("execute_program", run_p("bon-call", expected={"answer": "Nice"}))
    assert result["outputs"] == {"answer": "Nice"}


def test_a_reward_names_its_field_at_the_top(worker: RecordingWorker) -> None:
    worker.ok("configure_lm", {"session_id": "two", "model": "mock", "num_retries": 0,
                               "sequence": [{"answer": "x", "city": "Lyon"},
                                            {"answer": "y", "city": "Paris"}]})
    created = worker.ok("create_program", {
        "session_id": "two", "program_id": "p", "signature": "question -> answer, city",
        "program_type": "best_of_n",
        "options": {"reward": {"metric": "exact_match", "field": "city", "expected": "Paris"}}})
    assert created["options"]["reward"] == {"metric": {"name": "exact_match", "field": "city"},
                                            "expected": "Paris"}
    result = worker.ok("execute_program", {"session_id": "two", "program_id": "p",
                                           "inputs": {"question": "q"}})
    assert result["outputs"] == {"answer": "y", "city": "Paris"}


def test_best_of_n_keeps_the_best_when_none_reaches_the_threshold(
    worker: RecordingWorker,
) -> None:
    attempts(worker, "bon-f1", "best_of_n", ["red", "big red car", "car"],
             {"metric": "f1", "expected": "red car"}, threshold=1.0)
    assert worker.ok("execute_program", run_p("bon-f1"))["outputs"] == {"answer": "big red car"}


def test_best_of_n_with_a_host_reward(worker: RecordingWorker) -> None:
    attempts(worker, "bon-host", "best_of_n", ["a", "abc", "ab"], {"function": "score"},
             threshold=10.0)
    host = Host(worker, {"score": lambda args: len(args["outputs"]["answer"])})
    response = host.run("execute_program", run_p("bon-host"))
    assert response["success"], response
    assert response["result"]["outputs"] == {"answer": "abc"}
    assert [c["purpose"] for c in host.callbacks] == ["reward"] * 3
    assert host.callbacks[0]["args"] == {"inputs": {"question": "Capital?"},
                                         "outputs": {"answer": "a"}}


@pytest.mark.parametrize(("answer", "reason", "retryable"), [
    (lambda args: "high", "malformed", False),
    (lambda args: True, "malformed", False),
    (lambda args: float("nan"), "malformed", False),
    ("raise", "error", True),
])
def test_a_failing_host_reward_is_the_request_s_host_error(
    worker: RecordingWorker, answer: Any, reason: str, retryable: bool,
) -> None:
    attempts(worker, "bon-bad", "best_of_n", ["a", "b", "c"], {"function": "score"})

    def failing(args: Any) -> Any:
        raise HostError("scorer down", retryable=True)

    host = Host(worker, {"score": failing if answer == "raise" else answer})
    response = host.run("execute_program", run_p("bon-bad"))
    error = response["error"]
    assert error["type"] == "host_error", response
    assert error["retryable"] is retryable
    assert error["details"]["reason"] == reason
    assert error["details"]["function"] == "score"
    assert error["details"]["purpose"] == "reward"
    assert worker.call("ping")["status"] == "ok"


def test_refine_with_a_built_in_reward(worker: RecordingWorker) -> None:
    # Refine asks the LM for advice after a failed attempt: that call takes an answer of
    # the sequence too, placeholders where the map names none of its fields.
    attempts(worker, "refine", "refine", ["Lyon", {"discussion": "d", "advice": {}}, "Paris"],
             {"metric": "exact_match", "expected": "Paris"})
    result = worker.ok("execute_program", run_p("refine"))
    assert result["outputs"] == {"answer": "Paris"}


def test_refine_with_a_host_reward(worker: RecordingWorker) -> None:
    attempts(worker, "refine-host", "refine", ["short", {"discussion": "d", "advice": {}},
                                               "a longer answer"], {"function": "score"},
             threshold=0.9)
    host = Host(worker, {"score": lambda args: min(len(args["outputs"]["answer"]) / 10, 1)})
    response = host.run("execute_program", run_p("refine-host"))
    assert response["success"], response
    assert response["result"]["outputs"] == {"answer": "a longer answer"}
    assert [c["args"]["outputs"]["answer"] for c in host.callbacks] == [
        "short", "a longer answer"]


def test_attempt_programs_check_their_options(worker: RecordingWorker) -> None:
    base = {"session_id": "opts", "signature": "question -> answer",
            "program_type": "best_of_n"}
    assert "options.reward" in worker.invalid_fields("create_program", base)
    for reward, field in [({}, "options.reward"),
                          ({"metric": "exact_match", "function": "score"}, "options.reward"),
                          ({"function": "score", "expected": 1}, "options.reward"),
                          ({"function": "nope"}, "options.reward.function"),
                          ({"metric": "bleu"}, "options.reward.metric.name"),
                          ({"metric": "exact_match", "field": "nope"},
                           "options.reward.metric.field")]:
        assert field in worker.invalid_fields(
            "create_program", {**base, "options": {"reward": reward}}), reward
    for bad, field in [({"n": 0}, "options.n"), ({"n": 21}, "options.n"),
                       ({"module": "react"}, "options.module"),
                       ({"threshold": float("inf")}, "options.threshold"),
                       ({"fail_count": 0}, "options.fail_count")]:
        assert field in worker.invalid_fields("create_program", {
            **base, "options": {"reward": {"metric": "exact_match"}, **bad}}), bad
    created = worker.ok("create_program", {**base, "options": {
        "module": "chain_of_thought", "reward": {"metric": "contains", "expected": "x"}}})
    assert created["options"] == {"module": "chain_of_thought", "n": 3, "threshold": 1.0,
                                  "reward": {"metric": "contains", "expected": "x"}}


# ----- the mock's host generator -----


def test_the_mock_asks_the_host_for_every_answer(worker: RecordingWorker) -> None:
    worker.ok("register_tools", {"session_id": "gen", "tools": [{"name": "answerer"}]})
    worker.ok("configure_lm", {"session_id": "gen", "model": "mock/gen",
                               "generator": "answerer"})
    worker.ok("create_program", {"session_id": "gen", "program_id": "p",
                                 "signature": "question -> answer, length: int"})
    host = Host(worker, {"answerer": lambda args: {
        "answer": args["inputs"]["question"].upper(),
        "length": len(args["inputs"]["question"])}})
    for question in ("abc", "hello", "abc"):  # the same question twice: never cached
        response = host.run("execute_program", {"session_id": "gen", "program_id": "p",
                                                "inputs": {"question": question}})
        assert response["result"]["outputs"] == {"answer": question.upper(),
                                                 "length": len(question)}
    assert len(host.callbacks) == 3
    assert host.callbacks[0]["purpose"] == "mock"
    assert host.callbacks[0]["args"] == {
        "model": "mock/gen", "inputs": {"question": "abc"}, "outputs": ["answer", "length"],
        "instructions": "Given the fields `question`, produce the fields `answer`, `length`.",
        "demos": 0}


def test_a_generator_drives_a_react_agent_from_its_trajectory(
    worker: RecordingWorker,
) -> None:
    worker.ok("register_tools", {"session_id": "gen-react",
                                 "tools": [LOOKUP, {"name": "agent_lm"}]})
    worker.ok("configure_lm", {"session_id": "gen-react", "model": "mock",
                               "generator": "agent_lm"})
    worker.ok("create_program", {"session_id": "gen-react", "program_id": "agent",
                                 "signature": "question -> answer", "program_type": "react",
                                 "options": {"tools": ["lookup_order"]}})
    seen: list[dict[str, Any]] = []

    def agent_lm(args: Any) -> Any:
        seen.append(args["inputs"])
        if "next_tool_name" not in args["outputs"]:  # the extraction step
            return {"answer": "order " + args["inputs"]["question"].split()[-1]}
        if "observation_0" in args["inputs"]["trajectory"]:
            return FINISH
        return step("Look it up.", "lookup_order", {"order_id": args["inputs"]["question"]})

    host = Host(worker, {"agent_lm": agent_lm, "lookup_order": lambda args: "found"})
    response = host.run("execute_program", ask("gen-react", "A-5"))
    assert response["result"]["outputs"]["answer"] == "order A-5"
    assert [set(inputs) for inputs in seen] == [{"question", "trajectory"}] * 3
    assert "[[ ## observation_0 ## ]]" in seen[1]["trajectory"]


def test_a_failing_generator_is_the_request_s_host_error(worker: RecordingWorker) -> None:
    worker.ok("configure_lm", {"session_id": "gen-bad", "model": "mock",
                               "generator": "answerer", "num_retries": 0})
    worker.ok("create_program", {"session_id": "gen-bad", "program_id": "p",
                                 "signature": "question -> answer"})
    host = Host(worker, {})
    response = host.run("execute_program", {"session_id": "gen-bad", "program_id": "p",
                                            "inputs": {"question": "q"}})
    assert response["error"]["type"] == "host_error"
    assert response["error"]["details"]["reason"] == "unknown_function"
    assert host.callbacks == []

    def down(args: Any) -> Any:
        raise HostError("generator down")

    worker.ok("register_tools", {"session_id": "gen-bad", "tools": [{"name": "answerer"}]})
    response = Host(worker, {"answerer": down}).run(
        "execute_program", {"session_id": "gen-bad", "program_id": "p",
                            "inputs": {"question": "q"}})
    assert response["error"]["type"] == "host_error"
    assert response["error"]["details"]["reason"] == "error"
    assert "generator down" in response["error"]["message"]


# ----- shutdown -----


def test_shutdown_abandons_callbacks_past_the_grace(worker: RecordingWorker) -> None:
    agent(worker, "bye", [step("Look.", "lookup_order", {"order_id": "A"}), FINISH,
                          {"answer": "x"}])
    host = Host(worker, {})
    request_id = worker.start("execute_program", ask("bye"))
    while not host.callbacks:
        host.pump()
    worker.call("shutdown", {"grace_ms": 100})
    response = host.until(request_id)
    assert response["error"]["type"] == "shutting_down"
    assert [a["reason"] for a in host.abandoned] == ["shutting_down"]
    assert worker.wait_exit(30) == 0


# ----- host metrics and failures inside evaluate_program -----


def test_evaluate_with_a_host_metric(worker: RecordingWorker) -> None:
    worker.ok("configure_lm", {"session_id": "ev", "model": "mock",
                               "responses": {"a": "x", "b": "yy", "c": "zzz"}})
    worker.ok("register_tools", {"session_id": "ev", "tools": [{"name": "judge"}]})
    worker.ok("create_program", {"session_id": "ev", "program_id": "p",
                                 "signature": "question -> answer"})

    def judge(args: Any) -> Any:
        if args["inputs"]["question"] == "c":
            raise HostError("judge down")
        return len(args["outputs"]["answer"]) / len(args["expected"])

    host = Host(worker, {"judge": judge})
    response = host.run("evaluate_program", {
        "session_id": "ev", "program_id": "p", "per_example": True,
        "metric": {"name": "host", "function": "judge", "threshold": 0.9},
        "devset": [{"question": "a", "answer": "xx"}, {"question": "b", "answer": "yy"},
                   {"question": "c", "answer": "zzz"}]})
    assert response["success"], response
    result = response["result"]
    assert [e["score"] for e in result["per_example"]] == [0.5, 1.0, 0.0]
    assert result["passed"] == 1 and result["metric"]["name"] == "host"
    assert result["per_example"][2]["error"]["type"] == "host_error"
    assert {c["purpose"] for c in host.callbacks} == {"metric"}
    assert host.callbacks[0]["args"] == {"field": "answer", "inputs": {"question": "a"},
                                         "outputs": {"answer": "x"}, "expected": "xx"}
    assert "metric.function" in worker.invalid_fields("evaluate_program", {
        "session_id": "ev", "program_id": "p", "metric": {"name": "host", "function": "nope"},
        "devset": [{"question": "a", "answer": "x"}]})
    assert "metric.function" in worker.invalid_fields("evaluate_program", {
        "session_id": "ev", "program_id": "p", "metric": {"name": "host"},
        "devset": [{"question": "a", "answer": "x"}]})


def test_a_host_score_out_of_range_fails_that_example(worker: RecordingWorker) -> None:
    worker.ok("configure_lm", {"session_id": "ev2", "model": "mock", "default": "x"})
    worker.ok("register_tools", {"session_id": "ev2", "tools": [{"name": "judge"}]})
    worker.ok("create_program", {"session_id": "ev2", "program_id": "p",
                                 "signature": "question -> answer"})
    host = Host(worker, {"judge": lambda args: 2})
    response = host.run("evaluate_program", {
        "session_id": "ev2", "program_id": "p", "metric": {"name": "host", "function": "judge"},
        "devset": [{"question": "a", "answer": "x"}]})
    (failed,) = response["result"]["failed_examples"]
    assert failed["error"]["details"]["reason"] == "malformed"


def test_a_failed_generator_fails_only_its_example(worker: RecordingWorker) -> None:
    worker.ok("register_tools", {"session_id": "ev3", "tools": [{"name": "gen"}]})
    worker.ok("configure_lm", {"session_id": "ev3", "model": "mock", "generator": "gen",
                               "num_retries": 0})
    worker.ok("create_program", {"session_id": "ev3", "program_id": "p",
                                 "signature": "question -> answer"})

    def gen(args: Any) -> Any:
        if args["inputs"]["question"] == "bad":
            raise HostError("no answer for you")
        return args["inputs"]["question"]

    host = Host(worker, {"gen": gen})
    response = host.run("evaluate_program", {
        "session_id": "ev3", "program_id": "p", "metric": "exact_match", "max_concurrency": 4,
        "per_example": True,
        "devset": [{"question": q, "answer": q} for q in ("a", "bad", "c", "d")]})
    assert response["success"], response
    results = response["result"]["per_example"]
    assert [r["passed"] for r in results] == [True, False, True, True]
    assert results[1]["error"]["type"] == "host_error"
