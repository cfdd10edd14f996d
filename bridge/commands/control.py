"""Control commands: answered at once, when read, even at the in-flight limit or during
shutdown. Their handlers never wait (`CommandTable.control`).

Their arguments are plain dataclasses, read directly when plainly valid: the first
requests after start-up (a host's readiness pings) are answered before pydantic is
imported. Any other map goes to the pydantic model of the same name in
`commands.control_models`, which decides it and words its errors (tests/test_handlers.py
holds the two ways equal). `callback_reply` has a module of its own for the same reason.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Self, TypeVar

from dspy_bridge.commands.table import CommandTable, RequestContext
from dspy_bridge.domain.redaction import book
from dspy_bridge.domain.stats import rss_bytes
from dspy_bridge.protocol.errors import invalid_field

table = CommandTable()

DataclassT = TypeVar("DataclassT")


def by_model(kind: type[DataclassT], value: dict[Any, Any], context: str) -> DataclassT:
    """`value` read by `kind`'s pydantic model: for any map not plainly valid."""
    from dspy_bridge.commands import control_models

    model = getattr(control_models, kind.__name__)
    return kind(**model.read(value, context).model_dump())


@dataclass(frozen=True, slots=True)
class NoArgs:
    @classmethod
    def read(cls, value: dict[Any, Any], context: str) -> Self:
        return by_model(cls, value, context) if value else cls()


@dataclass(frozen=True, slots=True)
class CancelArgs:
    request_id: int | str

    @classmethod
    def read(cls, value: dict[Any, Any], context: str) -> Self:
        request_id = value.get("request_id")
        if len(value) == 1 and (request_id.__class__ is str or (
                request_id.__class__ is int and request_id >= 0)):
            return cls(request_id)
        return by_model(cls, value, context)


@dataclass(frozen=True, slots=True)
class ShutdownArgs:
    grace_ms: int | None = None

    @classmethod
    def read(cls, value: dict[Any, Any], context: str) -> Self:
        grace_ms = value.get("grace_ms")
        if value.keys() <= {"grace_ms"} and (
                grace_ms is None or (grace_ms.__class__ is int and grace_ms >= 0)):
            return cls(grace_ms)
        return by_model(cls, value, context)


@table.control("ping", NoArgs)
def ping(ctx: RequestContext, args: NoArgs) -> dict[str, Any]:
    worker = ctx.control
    return {
        "status": ping_status(worker.shutting_down, worker.engine_state),
        "worker_id": worker.worker_id,
        "pid": os.getpid(),
        "uptime_s": worker.uptime_s,
        "in_flight": worker.work_in_flight,
        "dspy_loaded": worker.engine_state == "ready",
        "engine": worker.engine_state,
    }


def ping_status(shutting_down: bool, engine: str) -> str:
    if shutting_down:
        return "shutting_down"
    return "engine_failed" if engine == "failed" else "ok"


@table.control("get_stats", NoArgs)
def get_stats(ctx: RequestContext, args: NoArgs) -> dict[str, Any]:
    worker = ctx.control
    stats = worker.stats
    result: dict[str, Any] = {
        "worker_id": worker.worker_id,
        "pid": os.getpid(),
        "uptime_s": worker.uptime_s,
        "requests": dict(stats.requests),
        "errors": dict(stats.errors),
        "in_flight": worker.work_in_flight,
        "max_in_flight": stats.max_in_flight,
        "max_in_flight_limit": ctx.options.max_in_flight,
        "rss_bytes": rss_bytes(),
        "latency_ms": stats.latency_summary(),
        "dspy_loaded": worker.engine_state == "ready",
        "engine": worker.engine_state,
        "outbox": {
            "pending_bytes": worker.outbox_budget.pending,
            "peak_bytes": worker.outbox_budget.peak,
            "limit_bytes": worker.outbox_budget.limit,
            "read_pauses": worker.outbox_budget.pauses,
        },
        "observer_failures": stats.observer_failures,
        "secrets_held": len(book),
        "callbacks": worker.callback_counts(),
        "logs": {
            "queued": worker.log_queue.queued if worker.log_queue else 0,
            "dropped": worker.log_queue.dropped if worker.log_queue else 0,
            "failures": stats.log_failures,
        },
    }
    result.update(ctx.sessions.stats())
    return result


@table.control("cancel", CancelArgs)
def cancel(ctx: RequestContext, args: CancelArgs) -> dict[str, Any]:
    if args.request_id == ctx.request_id and type(args.request_id) is type(ctx.request_id):
        # It would answer `cancelled: true` and then complete anyway: refuse it instead.
        raise invalid_field("request_id", "is this cancel request's own id")
    return {"cancelled": ctx.control.cancel(args.request_id)}


@table.control("shutdown", ShutdownArgs)
def shutdown(ctx: RequestContext, args: ShutdownArgs) -> dict[str, Any]:
    grace_ms = ctx.options.default_grace_ms if args.grace_ms is None else args.grace_ms
    in_flight = ctx.control.work_in_flight
    ctx.control.begin_shutdown(grace_ms)
    return {"shutting_down": True, "grace_ms": grace_ms, "in_flight": in_flight}
