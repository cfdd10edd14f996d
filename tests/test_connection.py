"""Both roles of the sans-I/O connection, driven as a pair in memory: the host's bytes are
the worker's input and the worker's bytes the host's, with no process in between."""

from __future__ import annotations

import queue
import struct
import threading
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dspy_bridge.protocol import codec
from dspy_bridge.protocol.connection import Connection, Rejected, Unsendable
from dspy_bridge.protocol.envelope import Request, error_response, event, ok_response
from dspy_bridge.protocol.errors import BridgeError, ErrorType
from dspy_bridge.protocol.framing import encode_frame
from dspy_bridge.protocol.host import (
    Event,
    HostConnection,
    HostItem,
    InvalidFrame,
    Response,
    Unexpected,
)
from dspy_bridge.protocol.peer import AnswerId, LocalProtocolError, id_in_flight_error


def answer(worker: Connection, item: Request | Rejected, result: Any = "done") -> bytes:
    """The worker's one response to an item it received."""
    if isinstance(item, Rejected):
        return worker.send_response(error_response(item.request_id, item.error)).frame
    return worker.send_response(ok_response(item.id, result)).frame


def test_a_request_and_its_response_cross_as_a_pair() -> None:
    host, worker = HostConnection(), Connection()
    frame = host.send_request({"id": 1, "command": "ping"})
    [request] = worker.receive_data(frame)
    # frame_bytes is its msgpack's size, without the length
    assert request == Request(id=1, command="ping", frame_bytes=len(frame) - 4)
    assert host.owed(1) == worker.owed(1) == 1
    [response] = host.receive_data(answer(worker, request, {"status": "ok"}))
    assert response == Response(
        1, True, {"status": "ok"}, None, {"id": 1, "success": True, "result": {"status": "ok"}}
    )
    assert host.owed_total == worker.owed_total == 0


def test_an_error_response_carries_the_wire_error() -> None:
    host, worker = HostConnection(), Connection()
    [request] = worker.receive_data(host.send_request({"id": "s", "command": "nope"}))
    assert isinstance(request, Request)
    error = BridgeError(ErrorType.UNKNOWN_COMMAND, "unknown command 'nope'")
    [response] = host.receive_data(worker.send_response(error_response(request.id, error)).frame)
    assert isinstance(response, Response)
    assert (response.id, response.ok, response.result) == ("s", False, None)
    assert response.error == error.to_wire()


def test_the_host_refuses_to_reuse_an_id_in_flight_until_it_is_answered() -> None:
    host, worker = HostConnection(), Connection()
    [request] = worker.receive_data(host.send_request({"id": 7, "command": "sleep"}))
    with pytest.raises(LocalProtocolError, match="already in flight"):
        host.send_request({"id": 7, "command": "ping"})
    assert host.owed(7) == 1  # the refused request counted nothing
    host.receive_data(answer(worker, request))
    [reused] = worker.receive_data(host.send_request({"id": 7, "command": "ping"}))
    assert isinstance(reused, Request)


def test_the_host_refuses_malformed_requests() -> None:
    host = HostConnection()
    for message in ({"id": -1, "command": "ping"}, {"id": 1}, {"id": 1, "command": "x", "a": 1}):
        with pytest.raises(LocalProtocolError):
            host.send_request(message)
    assert host.owed_total == 0


def test_the_worker_rejects_a_duplicate_id_and_owes_both_responses() -> None:
    host, worker = HostConnection(), Connection()
    [original] = worker.receive_data(host.send_request({"id": 7, "command": "sleep"}))
    duplicate = {"id": 7, "command": "echo", "args": {"value": "again"}}
    [rejected] = worker.receive_data(host.send_unchecked(duplicate))
    assert isinstance(rejected, Rejected)
    assert (rejected.request_id, rejected.value) == (7, duplicate)
    assert worker.owed(7) == host.owed(7) == 2
    first, second = host.receive_data(answer(worker, rejected) + answer(worker, original))
    assert isinstance(first, Response) and first.error == rejected.error.to_wire()
    assert isinstance(second, Response) and second.ok
    assert host.owed_total == worker.owed_total == 0


@pytest.mark.parametrize("request_id", [7, "job-1"])
def test_the_duplicate_rejection_is_the_one_admission_sent(request_id: int | str) -> None:
    # What the worker's admission (id_not_in_flight) put on the wire before the
    # connection took the rule over: the wire must not change.
    worker = Connection()
    worker.receive_data(encode_frame(codec.pack({"id": request_id, "command": "sleep"})))
    [rejected] = worker.receive_data(encode_frame(codec.pack({"id": request_id, "command": "x"})))
    assert isinstance(rejected, Rejected)
    assert rejected.error.to_wire() == {
        "type": "invalid_request",
        "message": f"request id {request_id!r} is already in flight",
        "retryable": False,
        "details": {"errors": [{"field": "id", "message": "already in flight"}]},
    }
    assert rejected.error.to_wire() == id_in_flight_error(request_id).to_wire()


def test_a_response_is_sent_once() -> None:
    host, worker = HostConnection(), Connection()
    [request] = worker.receive_data(host.send_request({"id": 3, "command": "ping"}))
    frame = answer(worker, request)
    with pytest.raises(LocalProtocolError, match="no response is owed for id 3"):
        answer(worker, request)
    # A worker that sent it twice anyway: the host takes the second as unexpected.
    first, second = host.receive_data(frame + frame)
    assert isinstance(first, Response)
    assert isinstance(second, Unexpected) and "no response is owed" in second.reason
    assert second.message == first.message


def test_the_worker_refuses_to_answer_what_it_never_received() -> None:
    worker = Connection()
    with pytest.raises(LocalProtocolError):
        worker.send_response(ok_response(1, None))
    with pytest.raises(LocalProtocolError, match="not a response"):
        worker.send_response({"id": 1, "result": None})
    with pytest.raises(LocalProtocolError, match="not a response"):
        worker.send_response({"id": [1], "success": True, "result": None})


def test_a_reply_that_cannot_go_out_is_replaced_by_an_error_under_its_id() -> None:
    worker = Connection(max_frame_items=50, max_reply_bytes=1_000)
    for request_id in (1, 2, 3, 4):
        worker.receive_data(encode_frame(codec.pack({"id": request_id, "command": "x"})))
    cases = {
        1: (object(), "internal", None),
        2: ("x" * 2_000, "limit_exceeded", "max_reply_bytes"),
        3: (list(range(100)), "limit_exceeded", "max_frame_items"),
        4: ("\ud800", "internal", None),
    }
    host = HostConnection()
    for request_id, (result, error_type, limit) in cases.items():
        host.send_unchecked({"id": request_id, "command": "x"})
        sent = worker.send_response(ok_response(request_id, result))
        assert worker.owed(request_id) == 0
        [response] = host.receive_data(sent.frame)
        assert isinstance(response, Response) and not response.ok
        assert response.message == sent.message
        assert response.error is not None and response.error["type"] == error_type
        assert (response.error.get("details") or {}).get("limit") == limit


def test_an_event_that_cannot_go_out_is_not_sent() -> None:
    worker = Connection(max_reply_bytes=100)
    with pytest.raises(Unsendable) as too_big:
        worker.send_event(event("progress", text="x" * 200))
    assert too_big.value.limit == "max_reply_bytes"
    with pytest.raises(Unsendable) as unencodable:
        worker.send_event(event("progress", value=object()))
    assert unencodable.value.limit is None


def test_responses_nobody_waits_for_are_unexpected() -> None:
    host = HostConnection()
    host.send_request({"id": 1, "command": "ping"})
    items = host.receive_data(
        b"".join(
            encode_frame(codec.pack(message))
            for message in (
                ok_response(2, None),  # an id never sent
                ok_response(None, None),  # nil, though every frame sent was readable
                ok_response(True, None),  # True is not the id 1
                ok_response(1.0, None),  # nor is 1.0
                {"id": 1, "result": None},  # no success
                {"id": 1, "success": True},  # no result
                {"id": 1, "success": False, "error": "x"},  # error not a map
                {"neither": "response nor event"},
            )
        )
    )
    assert all(isinstance(item, Unexpected) for item in items)
    assert host.owed(1) == 1  # a malformed response settles nothing


def test_a_nil_response_is_owed_for_an_unreadable_frame() -> None:
    host, worker = HostConnection(), Connection()
    sent = host.send_raw(encode_frame(b"\xc1")) + host.send_unchecked([1, 2])
    assert host.owed(None) == 2
    items = worker.receive_data(sent)
    assert [type(item) for item in items] == [Rejected, Rejected]
    responses = host.receive_data(b"".join(answer(worker, item) for item in items))
    assert [(type(r), getattr(r, "id", "")) for r in responses] == [(Response, None)] * 2
    assert host.owed_total == worker.owed_total == 0


def test_a_rejected_request_is_owed_under_its_own_id() -> None:
    host, worker = HostConnection(), Connection()
    [rejected] = worker.receive_data(host.send_unchecked({"id": 5, "command": 5}))
    assert isinstance(rejected, Rejected) and rejected.request_id == 5
    assert host.owed(5) == worker.owed(5) == 1
    [response] = host.receive_data(answer(worker, rejected))
    assert isinstance(response, Response) and response.error is not None
    assert response.error["type"] == "invalid_request"


def test_events_go_both_ways_unowed() -> None:
    host, worker = HostConnection(), Connection()
    frame = worker.send_event(event("session_evicted", session_id="s", reason="idle"))
    [item] = host.receive_data(frame)
    assert item == Event(
        "session_evicted", {"event": "session_evicted", "session_id": "s", "reason": "idle"}
    )
    assert host.owed_total == 0
    for bad in ({"id": 1, "event": "x"}, {"event": 5}):
        with pytest.raises(LocalProtocolError, match="not an event"):
            worker.send_event(bad)


def test_the_host_reads_the_worker_limits_from_ready() -> None:
    host, worker = HostConnection(), Connection(max_frame_bytes=40)
    ready = event("ready", limits={"max_frame_bytes": 40, "max_frame_items": 1_000_000})
    host.receive_data(worker.send_event(ready))
    big = {"id": 9, "command": "echo", "args": {"value": "x" * 100}}
    [rejected] = worker.receive_data(host.send_unchecked(big))
    assert isinstance(rejected, Rejected) and rejected.request_id is None
    assert host.owed(None) == 1 and host.owed(9) == 0  # as the worker will answer it


def test_fragments_fed_byte_by_byte() -> None:
    host, worker = HostConnection(), Connection()
    first = host.send_request({"id": 1, "command": "ping"})
    sent = first + host.send_request(
        {"id": "two", "command": "echo", "args": {"value": "é" * 300}}
    )
    received: list[Request | Rejected] = []
    for index in range(len(sent)):
        received += worker.receive_data(sent[index : index + 1])
        assert worker.has_partial_frame == (index + 1 not in {len(first), len(sent)})
    assert [item.id for item in received if isinstance(item, Request)] == [1, "two"]
    replies = b"".join(answer(worker, item) for item in reversed(received))
    items: list[HostItem] = []
    for index in range(len(replies)):
        items += host.receive_data(replies[index : index + 1])
    assert [(type(item), getattr(item, "id", None)) for item in items] == [
        (Response, "two"),
        (Response, 1),
    ]
    assert not host.has_partial_frame


def test_an_oversized_frame_is_rejected_under_nil_and_skipped() -> None:
    worker = Connection(max_frame_bytes=16)
    data = encode_frame(b"\x00" * 17) + encode_frame(codec.pack({"id": 1, "command": "p"}))
    first, second = worker.receive_data(data)
    assert isinstance(first, Rejected) and first.request_id is None
    assert first.error.type is ErrorType.INVALID_FRAME
    assert first.error.details == {"length": 17, "limit": "max_frame_bytes", "max_frame_bytes": 16}
    assert isinstance(second, Request)
    assert worker.owed(None) == worker.owed(1) == 1


def test_frames_the_host_cannot_read_are_invalid_frames() -> None:
    host = HostConnection(max_frame_bytes=16)
    items = host.receive_data(
        encode_frame(b"\x00" * 17)
        + encode_frame(b"\xc1")
        + encode_frame(codec.pack([1]))
        + struct.pack(">I", 1)
    )
    assert [type(item) for item in items] == [InvalidFrame] * 3
    assert [item.payload for item in items if isinstance(item, InvalidFrame)] == [
        None,
        b"\xc1",
        b"\x91\x01",
    ]
    assert host.has_partial_frame


def test_a_request_cannot_end_a_raw_frame_left_unfinished() -> None:
    host = HostConnection()
    frame = encode_frame(codec.pack({"id": 1, "command": "ping"}))
    host.send_raw(frame[:3])
    with pytest.raises(LocalProtocolError, match="unfinished"):
        host.send_request({"id": 2, "command": "ping"})
    host.send_raw(frame[3:])
    assert host.owed(1) == 1


def test_receiving_in_one_thread_while_answering_in_another() -> None:
    # The worker's threads: a reader decodes while the loop answers. Ids are reused as
    # soon as answered, so every count is checked and changed from both sides at once.
    host, worker = HostConnection(), Connection()
    received: queue.SimpleQueue[Request | Rejected | None] = queue.SimpleQueue()
    frames = [
        host.send_unchecked({"id": index % 8, "command": "ping"}) for index in range(4000)
    ]

    def read() -> None:
        for frame in frames:
            for item in worker.receive_data(frame):
                received.put(item)
        received.put(None)

    reader = threading.Thread(target=read)
    reader.start()
    replies = bytearray()
    while (item := received.get(timeout=10)) is not None:
        replies += answer(worker, item)
    reader.join()
    items = host.receive_data(bytes(replies))
    assert len(items) == len(frames) and all(isinstance(i, Response) for i in items)
    assert host.owed_total == worker.owed_total == 0


# ----- the invariant: every request gets exactly one response -----

request_ids = st.integers(0, 3) | st.sampled_from(["a", "b"])
OPERATIONS = ["request", "garbage", "answer", "event", "to_worker", "to_host"]


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_every_frame_sent_gets_exactly_one_response(data: st.DataObject) -> None:
    host, worker = HostConnection(), Connection()
    to_worker, to_host = bytearray(), bytearray()
    pending: list[Request | Rejected] = []  # what the worker received and owes
    sent: Counter[AnswerId] = Counter()  # frames sent, by the id their response goes under
    answered: Counter[AnswerId] = Counter()  # responses the host received, by id

    def deliver_to_worker(count: int) -> None:
        pending.extend(worker.receive_data(bytes(to_worker[:count])))
        del to_worker[:count]

    def deliver_to_host(count: int) -> None:
        for item in host.receive_data(bytes(to_host[:count])):
            assert isinstance(item, Response | Event), item
            if isinstance(item, Response):
                answered[item.id] += 1
        del to_host[:count]

    for _ in range(data.draw(st.integers(1, 60))):
        operation = data.draw(st.sampled_from(OPERATIONS))
        if operation == "request":
            request_id = data.draw(request_ids)
            message = {"id": request_id, "command": "ping"}
            if host.owed(request_id):
                with pytest.raises(LocalProtocolError):
                    host.send_request(message)
                to_worker += host.send_unchecked(message)  # the worker's to refuse
            else:
                to_worker += host.send_request(message)
            sent[request_id] += 1
        elif operation == "garbage":
            to_worker += host.send_raw(encode_frame(b"\xc1"))
            sent[None] += 1
        elif operation == "answer" and pending:
            item = pending.pop(data.draw(st.integers(0, len(pending) - 1)))
            to_host += answer(worker, item)
        elif operation == "event":
            to_host += worker.send_event(event("progress", n=1))
        elif operation == "to_worker":
            deliver_to_worker(data.draw(st.integers(0, len(to_worker))))
        elif operation == "to_host":
            deliver_to_host(data.draw(st.integers(0, len(to_host))))
        for answer_id in {*sent, None}:
            owed_by_worker = sum(
                1
                for item in pending
                if (item.request_id if isinstance(item, Rejected) else item.id) == answer_id
            )
            assert worker.owed(answer_id) == owed_by_worker
            assert host.owed(answer_id) == sent[answer_id] - answered[answer_id]

    deliver_to_worker(len(to_worker))
    while pending:
        to_host += answer(worker, pending.pop())
    deliver_to_host(len(to_host))
    assert answered == sent
    assert host.owed_total == worker.owed_total == 0
