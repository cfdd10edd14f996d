"""Random frames against a real worker: one well-formed reply each, and it keeps serving."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dspy_bridge.protocol.errors import ErrorType
from dspy_bridge.tools.client import WorkerExited
from tests.conftest import WorkerProcess

ERROR_TYPES = {member.value for member in ErrorType}
probe_ids = itertools.count()

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
# Maps shaped like requests, so validation (not only decoding) is exercised.
request_like = st.fixed_dictionaries(
    {},
    optional={
        "id": st.integers(-5, 2**64 - 1) | st.text(max_size=5) | scalars,
        "command": st.sampled_from(["ping", "get_stats", "cancel", "nope", ""]) | scalars,
        "args": st.dictionaries(st.sampled_from(["request_id", "grace_ms", "x"]), values) | values,
        "timeout_ms": st.integers(-2, 10**6) | scalars,
    },
)
payloads = (
    st.binary(max_size=64)
    | values.map(lambda v: msgpack.packb(v, use_bin_type=True))
    | request_like.map(lambda v: msgpack.packb(v, use_bin_type=True))
)


@pytest.fixture(scope="module")
def shared_worker() -> Iterator[WorkerProcess]:
    process = WorkerProcess()
    yield process
    process.close()


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(payload=payloads)
def test_random_frames_get_one_reply_each(shared_worker: WorkerProcess, payload: bytes) -> None:
    worker = shared_worker
    worker.responses.clear()
    worker.send_frame(payload)
    probe = f"probe-{next(probe_ids)}"
    worker.send({"id": probe, "command": "ping"})
    replies: list[dict[str, Any]] = []
    while True:
        message = worker.read_message(timeout=10)
        if message.get("id") == probe:
            assert message["success"] is True
            break
        if "event" not in message:
            replies.append(message)
    assert len(replies) == 1, replies
    reply = replies[0]
    assert set(reply) == {"id", "success", "result" if reply["success"] else "error"}
    if not reply["success"]:
        assert reply["error"]["type"] in ERROR_TYPES
        assert isinstance(reply["error"]["message"], str)
        assert isinstance(reply["error"]["retryable"], bool)


# ----- every field of every command, wrong types, mutated and oversized frames -----

# A valid request for every command; each case breaks one field of one of them.
VALID_ARGS: dict[str, dict[str, Any]] = {
    "ping": {},
    "get_stats": {},
    "cancel": {"request_id": 1},
    "shutdown": {"grace_ms": 10},
    "callback_reply": {"callback_id": "cb-1", "result": {"rows": 1}},
    "configure_lm": {"session_id": "fuzz", "model": "mock", "temperature": 0.5,
                     "extra": {"default": "ok"}},
    "create_program": {"session_id": "fuzz", "signature": "q -> a", "demos": [{"q": "d"}],
                       "program_type": "predict"},
    "execute_program": {"session_id": "fuzz", "program_id": "fz", "inputs": {"q": "x"},
                        "config": {"temperature": 0.1}},
    "evaluate_program": {"session_id": "fuzz", "program_id": "fz",
                         "devset": [{"q": "x", "a": "ok"}],
                         "metric": {"name": "contains", "field": "a"}, "max_concurrency": 2},
    "execute_batch": {"session_id": "fuzz", "program_id": "fz", "inputs": [{"q": "x"}],
                      "max_concurrency": 2},
    "compile_program": {"session_id": "fuzz", "program_id": "fz",
                        "optimizer": "labeled_few_shot", "trainset": [{"q": "x", "a": "ok"}],
                        "metric": "exact_match", "options": {"k": 1},
                        "target_program_id": "fz-compiled"},
    "register_signature": {"session_id": "fuzz", "name": "FuzzQA", "signature": "q -> a"},
    "get_signature": {"session_id": "fuzz", "name": "FuzzQA"},
    "list_signatures": {"session_id": "fuzz"},
    "delete_signature": {"session_id": "fuzz", "name": "FuzzQA"},
    "register_tools": {"session_id": "fuzz", "tools": [{
        "name": "fuzz_tool", "description": "d",
        "parameters": {"type": "object", "properties": {"x": {"type": "string"}}}}]},
    "list_tools": {"session_id": "fuzz"},
    "delete_tool": {"session_id": "fuzz", "name": "fuzz_tool"},
    "get_program": {"session_id": "fuzz", "program_id": "fz"},
    "list_programs": {"session_id": "fuzz"},
    "delete_program": {"session_id": "fuzz", "program_id": "absent"},
    "list_sessions": {},
    "end_session": {"session_id": "absent"},
    "export_program": {"session_id": "fuzz", "program_id": "fz"},
    "import_program": {"session_id": "fuzz2", "document": {
        "format": "dspy-bridge/program", "version": 1, "program_type": "predict",
        "signature": {"inputs": [{"name": "q"}], "outputs": [{"name": "a"}]}, "state": {}}},
    "get_usage": {"session_id": "fuzz"},
    "reset_usage": {"session_id": "fuzz"},
    "get_history": {"session_id": "fuzz", "n": 5},
    "configure_cache": {"enable_memory": True, "memory_max_entries": 100},
    "sleep": {"ms": 1},
    "echo": {"value": [1, "two"]},
    "fail": {},
    "stdout_noise": {"text": "noise\n"},
}

wrong_values = (
    scalars
    | st.lists(scalars, max_size=3)
    | st.dictionaries(st.text(max_size=5), scalars, max_size=3)
    | st.integers(-(2**63), -1)
    | st.just(float("nan"))
    | st.text(min_size=300, max_size=2000)
)


@st.composite
def broken_requests(draw: Any) -> dict[str, Any]:
    command = draw(st.sampled_from(sorted(VALID_ARGS)))
    args = dict(VALID_ARGS[command])
    how = draw(st.sampled_from(["retype", "drop", "extra", "args"]))
    if how == "retype" and args:
        args[draw(st.sampled_from(sorted(args)))] = draw(wrong_values)
    elif how == "drop" and args:
        del args[draw(st.sampled_from(sorted(args)))]
    elif how == "extra":
        args[draw(st.text(min_size=1, max_size=8))] = draw(wrong_values)
    else:
        return {"id": next(probe_ids), "command": command, "args": draw(wrong_values),
                "timeout_ms": 5000}
    return {"id": next(probe_ids), "command": command, "args": args, "timeout_ms": 5000}


def nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


oversized = st.sampled_from([
    {"command": "echo", "args": {"value": nested(125)}},  # just within the depth limit
    {"command": "echo", "args": {"value": nested(127)}},  # just over it
    {"command": "echo", "args": {"value": list(range(200_000))}},
    {"command": "echo", "args": {"value": {str(i): i for i in range(50_000)}}},
    {"command": "ping", "args": {f"k{i}": i for i in range(5_000)}},
    {"command": "create_program", "args": {"signature": "q -> a",
                                           "demos": [{"q": "x"}] * 20_000}},
])


@st.composite
def mutated_frames(draw: Any) -> bytes:
    request = draw(broken_requests())
    payload = bytearray(msgpack.packb(request, use_bin_type=True))
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, max(0, len(payload) - 1)))
        action = draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip" and payload:
            payload[position] ^= 1 << draw(st.integers(0, 7))
        elif action == "cut":
            del payload[position:]
        else:
            payload[position:position] = draw(st.binary(min_size=1, max_size=4))
    return bytes(payload)


@pytest.fixture(scope="module")
def test_worker() -> Iterator[WorkerProcess]:
    holder: list[WorkerProcess] = []
    yield _FuzzWorkers(holder)  # type: ignore[misc]
    for process in holder:
        process.close()


class _FuzzWorkers:
    """The worker under fuzz, started again when a case legitimately shut it down."""

    def __init__(self, holder: list[WorkerProcess]) -> None:
        self._holder = holder

    def current(self) -> WorkerProcess:
        if not self._holder or self._holder[-1].process.poll() is not None:
            process = WorkerProcess("--enable-test-commands")
            process.call("configure_lm", {"session_id": "fuzz", "model": "mock"})
            process.call("create_program", {"session_id": "fuzz", "program_id": "fz",
                                            "signature": "q -> a"})
            self._holder.append(process)
        return self._holder[-1]


def _answer_id(value: Any) -> Any:
    """The id a frame's reply must carry: its own when it is a valid id, else nil."""
    candidate = value.get("id") if isinstance(value, dict) else None
    if isinstance(candidate, str) or (
        isinstance(candidate, int) and not isinstance(candidate, bool) and 0 <= candidate < 2**64
    ):
        return candidate
    return None


def _one_reply_then_ping(workers: _FuzzWorkers, payload: bytes, decoded: Any) -> None:
    """Send one frame, then a ping: the frame gets exactly one reply (no other reply
    comes), which is typed and never `internal`; the ping succeeds (unless the frame was
    a valid shutdown, which the ping then reports)."""
    request_id = _answer_id(decoded)
    # `fail` answers `internal` on purpose; nothing else may.
    internal_ok = isinstance(decoded, dict) and decoded.get("command") == "fail"
    worker = workers.current()
    worker.responses.clear()
    worker.send_frame(payload)
    probe = f"probe-{next(probe_ids)}"
    worker.send({"id": probe, "command": "ping"})
    replies: list[dict[str, Any]] = []
    ping: dict[str, Any] | None = None
    while ping is None or not replies:
        try:
            message = worker.read_message(timeout=30)
        except WorkerExited:
            # Only after a shutdown it answered: with nothing in flight the worker may
            # exit before reading the ping (every frame it reads is answered; that one
            # it never read).
            assert [r.get("id") for r in replies] == [request_id], replies
            assert replies[0]["success"] and decoded.get("command") == "shutdown", replies
            return
        if "event" in message and "id" not in message:
            continue
        if message.get("id") == probe:
            ping = message
        else:
            replies.append(message)
    assert [reply.get("id") for reply in replies] == [request_id], replies
    reply = replies[0]
    if not reply["success"]:
        assert reply["error"]["type"] in ERROR_TYPES, reply
        assert internal_ok or reply["error"]["type"] != "internal", reply
    if ping["success"] is False:  # a legitimate shutdown: the ping says so
        assert ping["error"]["type"] == "shutting_down"
        worker.wait_exit(timeout=30)
    else:
        assert ping["result"]["status"] in {"ok", "shutting_down"}
        if ping["result"]["status"] == "shutting_down":
            worker.wait_exit(timeout=30)


def test_the_fuzz_covers_every_command(test_worker: _FuzzWorkers) -> None:
    assert set(VALID_ARGS) == set(test_worker.current().ready["commands"])


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(request=broken_requests())
def test_wrong_types_in_every_field_of_every_command(
    test_worker: _FuzzWorkers, request: dict[str, Any]
) -> None:
    payload = msgpack.packb(request, use_bin_type=True)
    _one_reply_then_ping(test_worker, payload, request)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=mutated_frames())
def test_mutated_frames_get_one_reply_each(test_worker: _FuzzWorkers, payload: bytes) -> None:
    try:
        decoded = msgpack.unpackb(payload, strict_map_key=False)
    except Exception:  # noqa: BLE001 - undecodable: answered with id nil
        decoded = None
    _one_reply_then_ping(test_worker, payload, decoded)


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=oversized)
def test_oversized_containers_get_one_reply_each(
    test_worker: _FuzzWorkers, request: dict[str, Any]
) -> None:
    message = {"id": next(probe_ids), **request, "timeout_ms": 30_000}
    _one_reply_then_ping(test_worker, msgpack.packb(message, use_bin_type=True), message)
