"""Named signatures against a real worker: worker-level ones shared, session-level ones
private and shadowing, programs created by `{ref}`, bounded and typed errors."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import WorkerProcess

QA = "question -> answer"
STRUCTURED = {"inputs": [{"name": "text", "type": "str"}],
              "outputs": [{"name": "label", "type": "str"}, {"name": "score", "type": "float"}]}


def signature_of(worker: WorkerProcess, session: str, ref: str) -> Any:
    created = worker.call("create_program", {"session_id": session, "signature": {"ref": ref}})
    return created["signature"]


def test_worker_signatures_are_shared_and_session_ones_private(worker: WorkerProcess) -> None:
    shared = worker.call("register_signature", {"name": "BasicQA", "signature": QA})
    assert (shared["scope"], shared["replaced"]) == ("worker", False)
    own = worker.call("register_signature", {"session_id": "a", "name": "BasicQA",
                                             "signature": STRUCTURED})
    assert own["scope"] == "session"
    # session a sees its own; session b (and any other) sees the worker's
    assert [f["name"] for f in signature_of(worker, "a", "BasicQA")["outputs"]] == [
        "label", "score"]
    assert [f["name"] for f in signature_of(worker, "b", "BasicQA")["outputs"]] == ["answer"]
    listed = worker.call("list_signatures", {"session_id": "a"})["signatures"]
    assert [(s["name"], s["scope"]) for s in listed] == [("BasicQA", "session")]
    assert [s["scope"] for s in worker.call("list_signatures", {})["signatures"]] == ["worker"]
    assert worker.call("get_signature", {"session_id": "b", "name": "BasicQA"})["scope"] == (
        "worker")


def test_replacing_and_deleting(worker: WorkerProcess) -> None:
    worker.call("register_signature", {"session_id": "s", "name": "Q", "signature": QA})
    again = worker.call("register_signature", {"session_id": "s", "name": "Q",
                                               "signature": "text -> label"})
    assert again["replaced"] is True
    assert worker.call("delete_signature", {"session_id": "s", "name": "Q"})["deleted"] is True
    error = worker.request("delete_signature", {"session_id": "s", "name": "Q"})["error"]
    assert error["type"] == "not_found"
    error = worker.request("create_program", {"session_id": "s", "signature": {"ref": "Q"}})
    assert error["error"]["type"] == "invalid_args"
    assert error["error"]["details"]["errors"][0]["field"] == "signature.ref"


def test_a_program_made_from_a_ref_runs_and_exports_its_signature(
    worker: WorkerProcess,
) -> None:
    worker.call("register_signature", {"name": "BasicQA", "signature": QA})
    worker.call("configure_lm", {"session_id": "r", "model": "mock",
                                 "extra": {"default": "42"}}, timeout_ms=60_000)
    worker.call("create_program", {"session_id": "r", "program_id": "qa",
                                   "signature": {"ref": "BasicQA"}})
    result = worker.call("execute_program", {"session_id": "r", "program_id": "qa",
                                             "inputs": {"question": "q"}}, timeout_ms=60_000)
    assert result["outputs"] == {"answer": "42"}
    document = worker.call("export_program", {"session_id": "r", "program_id": "qa"})["document"]
    assert [f["name"] for f in document["signature"]["inputs"]] == ["question"]


def test_session_signatures_count_to_the_session_and_go_with_it(spawn: Any) -> None:
    worker = spawn("--max-session-bytes", "2000")
    worker.call("register_signature", {"session_id": "b", "name": "One", "signature": QA})
    too_many = {"inputs": [{"name": f"f{n}", "type": "str", "desc": "d" * 200}
                           for n in range(20)], "outputs": [{"name": "o", "type": "str"}]}
    error = worker.request("register_signature", {"session_id": "b", "name": "Big",
                                                  "signature": too_many})["error"]
    assert error["type"] == "limit_exceeded" and error["details"]["limit"] == "max_session_bytes"
    worker.call("end_session", {"session_id": "b"})
    assert worker.call("list_signatures", {"session_id": "b"})["signatures"] == []


@pytest.mark.parametrize(("args", "field"), [
    ({"name": "", "signature": QA}, "name"),
    ({"name": "has space", "signature": QA}, "name"),
    ({"name": "X", "signature": "no arrow"}, "signature"),
    ({"name": "X", "signature": {"inputs": []}}, "signature.outputs"),
    ({"name": "X"}, "signature"),
    ({"name": 5, "signature": QA}, "name"),
])
def test_bad_registrations_are_invalid_args(worker: WorkerProcess, args: dict[str, Any],
                                            field: str) -> None:
    error = worker.request("register_signature", args)["error"]
    assert error["type"] == "invalid_args", error
    assert field in [e["field"] for e in error["details"]["errors"]], error
