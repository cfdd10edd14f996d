"""Random frames against a real worker: one well-formed reply each, and it keeps serving."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.errors import ErrorType
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
