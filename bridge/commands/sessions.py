"""Sessions and their usage books: list, end, get and reset usage."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from dspy_bridge.commands.common import SessionRef
from dspy_bridge.commands.table import CommandTable, RequestContext
from dspy_bridge.domain.history import MAX_ENTRIES
from dspy_bridge.domain.models import Args, SessionId
from dspy_bridge.domain.usage import ModelUsage

table = CommandTable(needs_engine=True)


@table.command("list_sessions", SessionRef)
async def list_sessions(ctx: RequestContext, args: SessionRef) -> dict[str, Any]:
    """Every session, or just the one named by `session_id` (none if it does not exist)."""
    sessions = ctx.sessions.sessions
    if args.session_id is not None:
        found = sessions.get(args.session_id)
        return {"sessions": [] if found is None else [found.to_wire()]}
    return {"sessions": [s.to_wire() for s in sessions.values()]}


@table.command("end_session", SessionRef)
async def end_session(ctx: RequestContext, args: SessionRef) -> dict[str, Any]:
    session = ctx.sessions.end(args.session_id)
    return {"ended": True, "session_id": session.session_id, "programs": len(session.programs)}


@table.command("get_usage", SessionRef)
async def get_usage(ctx: RequestContext, args: SessionRef) -> dict[str, Any]:
    store = ctx.sessions
    session = store.get(args.session_id)
    usage = {"models": {}, "total": ModelUsage().to_wire(), "since": None} if session is None \
        else session.usage.to_wire()
    return {"session_id": store.resolve_id(args.session_id), **usage}


class HistoryArgs(Args):
    session_id: SessionId | None = None
    n: Annotated[int, Field(ge=1, le=MAX_ENTRIES)] = 10


@table.command("get_history", HistoryArgs)
async def get_history(ctx: RequestContext, args: HistoryArgs) -> dict[str, Any]:
    """The session's last `n` LM calls, oldest first (DSPy's inspect_history)."""
    session = ctx.sessions.get(args.session_id)
    return {"session_id": ctx.sessions.resolve_id(args.session_id),
            "entries": [] if session is None else session.history.last(args.n),
            "recorded": 0 if session is None else session.history.recorded}


@table.command("reset_usage", SessionRef)
async def reset_usage(ctx: RequestContext, args: SessionRef) -> dict[str, Any]:
    store = ctx.sessions
    session = store.get(args.session_id)
    if session is not None:
        session.usage.reset()
    return {"session_id": store.resolve_id(args.session_id), "reset": True}
