"""The serving layer's pure parts, in process: the admission chain, the in-flight table,
a request's run, idle eviction. The same rules are exercised end to end by the
real-process suites."""

from __future__ import annotations

import ast
import asyncio
import inspect
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import pytest
import structlog

from dspy_bridge import main
from dspy_bridge.commands.registry import COMMANDS
from dspy_bridge.commands.table import CommandSpec
from dspy_bridge.domain.models import Args
from dspy_bridge.domain.sessions import SessionStore
from dspy_bridge.domain.stats import Stats
from dspy_bridge.options import WorkerOptions
from dspy_bridge.protocol.envelope import Request
from dspy_bridge.protocol.errors import BridgeError, ErrorType
from dspy_bridge.serve.admission import CHECKS, refusal
from dspy_bridge.serve.request import RequestRunner
from dspy_bridge.serve.requests import InFlight, InFlightTable


async def _handler(_ctx: Any, _args: Any) -> None:
    return None


class NoArgs(Args):
    pass


WORK = CommandSpec("execute_program", NoArgs, _handler, needs_engine=True)
CONTROL = CommandSpec("ping", NoArgs, _handler, control=True)
REQUEST = Request(id=1, command="x")


@dataclass
class State:
    exiting: bool = False
    shutting_down: bool = False
    work_in_flight: int = 0
    max_in_flight: int = 2
    work_bytes_in_flight: int = 0
    max_in_flight_bytes: int = 1000
    engine_state: str = "ready"

    def engine_error(self) -> BridgeError:
        return BridgeError(ErrorType.ENGINE_UNAVAILABLE, "no engine", retryable=True)


def refused(spec: CommandSpec[Any], **state: Any) -> str | None:
    error = refusal(REQUEST, spec, State(**state))
    return None if error is None else error.type.value


def test_a_healthy_worker_admits_everything() -> None:
    assert refused(WORK) is None and refused(CONTROL) is None


def test_shutdown_refuses_work_but_serves_control_until_the_exit() -> None:
    assert refused(WORK, shutting_down=True) == "shutting_down"
    assert refused(CONTROL, shutting_down=True) is None
    assert refused(CONTROL, shutting_down=True, exiting=True) == "shutting_down"


def test_a_failed_engine_refuses_only_what_needs_it() -> None:
    assert refused(WORK, engine_state="failed") == "engine_unavailable"
    assert refused(CONTROL, engine_state="failed") is None
    assert refused(WORK, engine_state="loading") is None


def test_the_in_flight_limit_holds_work_not_control() -> None:
    error = refusal(REQUEST, WORK, State(work_in_flight=2))
    assert error is not None and error.type is ErrorType.LIMIT_EXCEEDED
    assert error.details == {"limit": "max_in_flight", "max_in_flight": 2}
    assert refused(CONTROL, work_in_flight=2) is None


def test_the_first_check_in_the_chain_wins() -> None:
    # shutting down, engine failed and full at once: the chain's order decides
    assert refused(WORK, shutting_down=True, engine_state="failed", work_in_flight=9) == (
        "shutting_down"
    )
    assert refused(WORK, engine_state="failed", work_in_flight=9) == "engine_unavailable"
    assert [check.__name__ for check in CHECKS] == [
        "not_shutting_down", "engine_available", "room_in_flight", "bytes_in_flight",
    ]


def test_the_bytes_in_flight_bound_spares_control_and_a_lone_request() -> None:
    big = Request(id=2, command="x", frame_bytes=5000)
    assert refusal(big, WORK, State()) is None  # alone, any size is admitted
    error = refusal(big, WORK, State(work_in_flight=1, work_bytes_in_flight=10))
    assert error is not None and error.details is not None
    assert error.details["limit"] == "max_in_flight_bytes" and error.retryable
    assert refusal(big, CONTROL, State(work_in_flight=1, work_bytes_in_flight=999)) is None
    small = Request(id=3, command="x", frame_bytes=100)
    assert refusal(small, WORK, State(work_in_flight=1, work_bytes_in_flight=900)) is None


def test_the_in_flight_table_counts_work_and_bytes_as_requests_come_and_go() -> None:
    table = InFlightTable()
    table.add(1, InFlight("execute_program", started=0.0, frame_bytes=100))
    table.add(2, InFlight("evaluate", started=0.0, frame_bytes=20))
    table.add("a", InFlight("execute_program", started=0.0, frame_bytes=3))
    assert (len(table), table.work_bytes) == (3, 123)
    table.remove(1)
    table.remove(2)
    assert (len(table), table.work_bytes) == (1, 3)
    assert 1 not in table and "a" in table


def test_stopping_a_request_cancels_its_task_once_with_the_error_it_answers() -> None:
    async def scenario() -> None:
        table = InFlightTable()
        entry = InFlight("sleep", started=0.0, began=True)
        entry.task = asyncio.ensure_future(asyncio.sleep(10))
        table.add(7, entry)
        first = BridgeError(ErrorType.CANCELLED, "cancelled")
        assert table.stop(7, first)
        assert not table.stop(7, BridgeError(ErrorType.SHUTTING_DOWN, "late"))
        assert entry.abandon_error is first
        with pytest.raises(asyncio.CancelledError):
            await entry.task
        assert not table.stop(8, first)  # unknown id
        assert table.work_tasks() == set()

    asyncio.run(scenario())


def test_a_request_stopped_before_its_task_began_still_answers_the_stop() -> None:
    """A task cancelled before it begins would end without running a line: no reply. So a
    request stopped then (by a control command read in the same turn) is not cancelled;
    its task answers the stop's error as it begins."""
    answers: list[dict[str, Any]] = []

    class Replies:
        def reply(self, message: dict[str, Any]) -> None:
            answers.append(message)

        def log_request(self, *args: Any, **fields: Any) -> None:
            pass

    async def handler(ctx: Any, args: Any) -> str:
        raise AssertionError("a stopped request's handler must not run")

    async def scenario() -> None:
        table = InFlightTable()
        runner = RequestRunner(table, Replies(), Stats(), structlog.get_logger())  # type: ignore[arg-type]
        spec = CommandSpec("sleep", NoArgs, handler)
        request = Request(id=7, command="sleep")
        entry = InFlight("sleep", started=0.0)
        table.add(7, entry)
        entry.task = asyncio.get_running_loop().create_task(
            runner.run(request, spec, NoArgs(), None, entry)  # type: ignore[arg-type]
        )
        assert table.stop(7, BridgeError(ErrorType.CANCELLED, "cancelled by the host"))
        await entry.task
        assert not entry.task.cancelled()
        assert 7 not in table

    asyncio.run(scenario())
    assert [(a["id"], a["success"], a["error"]["type"]) for a in answers] == [
        (7, False, "cancelled")
    ]


def test_idle_eviction_spares_busy_sessions() -> None:
    store = SessionStore(WorkerOptions().session_limits())
    idle, busy, fresh = (store.get_or_create(name) for name in ("idle", "busy", "fresh"))
    idle.last_used_monotonic = busy.last_used_monotonic = 100.0
    fresh.last_used_monotonic = 109.5
    busy.busy = 1
    evicted = store.evict_idle(ttl_s=5.0, now=110.0)
    assert [(session.session_id, idle_s) for session, idle_s in evicted] == [("idle", 10.0)]
    assert set(store.sessions) == {"busy", "fresh"} and store.evicted == 1


def test_the_first_reply_needs_no_pydantic() -> None:
    """Pydantic is most of start-up's imports: the modules `main._serve` imports before
    serving, and the control commands' module, must not import it (a readiness ping is
    answered before it loads; any other request imports it when first needed)."""
    serve = next(node for node in ast.walk(ast.parse(inspect.getsource(main)))
                 if isinstance(node, ast.FunctionDef) and node.name == "_serve")
    modules = [alias.name for node in serve.body if isinstance(node, ast.Import)
               for alias in node.names]
    modules += [node.module for node in serve.body
                if isinstance(node, ast.ImportFrom) and node.module]
    modules.append(COMMANDS["ping"])
    assert "dspy_bridge.serve.worker" in modules
    imported = subprocess.run(
        [sys.executable, "-c",
         f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
         "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pydantic'))"],
        capture_output=True, text=True, check=True,
    )
    assert imported.stdout.strip() == "[]"
