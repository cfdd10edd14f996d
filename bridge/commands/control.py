"""Control commands: answered at once, when read, even at the in-flight limit or during
shutdown. Their handlers never wait (`CommandTable.control`)."""

from __future__ import annotations

import os
from typing import Annotated, Any

from pydantic import Field, model_validator

from dspy_bridge.commands.table import CommandTable, RequestContext
from dspy_bridge.domain.models import Args
from dspy_bridge.domain.redaction import book
from dspy_bridge.domain.stats import rss_bytes
from dspy_bridge.protocol.errors import BridgeError, ErrorType, invalid_field

table = CommandTable()


class NoArgs(Args):
    pass


class CancelArgs(Args):
    request_id: Annotated[int, Field(ge=0)] | str


class ShutdownArgs(Args):
    grace_ms: Annotated[int, Field(ge=0)] | None = None


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


class HostErrorAnswer(Args):
    message: Annotated[str, Field(max_length=8192)]
    type: Annotated[str, Field(min_length=1, max_length=100)] = "host_error"
    retryable: bool = False


class CallbackReplyArgs(Args):
    callback_id: Annotated[str, Field(min_length=1, max_length=100)]
    result: Any = None
    error: HostErrorAnswer | None = None

    @model_validator(mode="after")
    def _one_answer(self) -> CallbackReplyArgs:
        if ("result" in self.model_fields_set) == (self.error is not None):
            raise ValueError("give exactly one of result and error")
        return self


@table.control("callback_reply", CallbackReplyArgs)
def callback_reply(ctx: RequestContext, args: CallbackReplyArgs) -> dict[str, Any]:
    error = None if args.error is None else args.error.model_dump()
    outcome = ctx.control.settle_callback(args.callback_id, args.result, error)
    if outcome is None:
        raise BridgeError(ErrorType.NOT_FOUND,
                          f"this worker never issued callback {args.callback_id[:100]!r}",
                          details={"callback_id": args.callback_id})
    return {"accepted": True} if outcome == "accepted" else {"accepted": False,
                                                             "reason": outcome}


@table.control("shutdown", ShutdownArgs)
def shutdown(ctx: RequestContext, args: ShutdownArgs) -> dict[str, Any]:
    grace_ms = ctx.options.default_grace_ms if args.grace_ms is None else args.grace_ms
    in_flight = ctx.control.work_in_flight
    ctx.control.begin_shutdown(grace_ms)
    return {"shutting_down": True, "grace_ms": grace_ms, "in_flight": in_flight}
