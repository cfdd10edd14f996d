"""Host functions a session declares (`register_tools`, `list_tools`, `delete_tool`):
the ReAct tools, rewards and mock generators its requests may call back to the host for.
The worker asks the host only for functions declared here (PROTOCOL.md)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator

from dspy_bridge.commands.common import SessionRef, engine_of
from dspy_bridge.commands.table import CommandTable, RequestContext
from dspy_bridge.domain.host import RESERVED_NAMES, HostFunction
from dspy_bridge.domain.models import Args, FunctionName, SessionId
from dspy_bridge.protocol import codec
from dspy_bridge.protocol.errors import BridgeError, ErrorType, invalid_field

table = CommandTable(needs_engine=True)

DEFAULT_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


class ToolDeclaration(Args):
    name: FunctionName
    description: Annotated[str, Field(max_length=8192)] = ""
    parameters: dict[str, Any] | None = None

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name in RESERVED_NAMES:
            raise ValueError(f"{name!r} is reserved (ReAct's own tool)")
        return name


class RegisterToolsArgs(Args):
    session_id: SessionId | None = None
    # how many a session may declare is the store's check (limit_exceeded, max_tools)
    tools: Annotated[list[ToolDeclaration], Field(min_length=1)]


class ToolRef(Args):
    session_id: SessionId | None = None
    name: FunctionName


@table.command("register_tools", RegisterToolsArgs)
async def register_tools(ctx: RequestContext, args: RegisterToolsArgs) -> dict[str, Any]:
    engine = await engine_of(ctx)
    functions, seen = [], set()
    for index, tool in enumerate(args.tools):
        if tool.name in seen:
            raise invalid_field(f"tools.{index}.name", f"{tool.name!r} is declared twice")
        seen.add(tool.name)
        parameters = DEFAULT_PARAMETERS if tool.parameters is None else tool.parameters
        engine.check_tool_parameters(parameters, f"tools.{index}.parameters")
        declared = {"name": tool.name, "description": tool.description, "parameters": parameters}
        functions.append(HostFunction(tool.name, tool.description, parameters,
                                      len(codec.pack(declared))))
    session = ctx.sessions.get_or_create(args.session_id)
    ctx.sessions.add_tools(session, functions)
    return {"session_id": session.session_id, "registered": [f.name for f in functions],
            "tools": len(session.tools)}


@table.command("list_tools", SessionRef)
async def list_tools(ctx: RequestContext, args: SessionRef) -> dict[str, Any]:
    session = ctx.sessions.get(args.session_id)
    tools = [] if session is None else [f.to_wire() for f in session.tools.values()]
    return {"session_id": ctx.sessions.resolve_id(args.session_id), "tools": tools}


@table.command("delete_tool", ToolRef)
async def delete_tool(ctx: RequestContext, args: ToolRef) -> dict[str, Any]:
    session = ctx.sessions.get(args.session_id)
    sid = ctx.sessions.resolve_id(args.session_id)
    if session is None or args.name not in session.tools:
        raise BridgeError(ErrorType.NOT_FOUND, f"session {sid!r} declares no host function "
                          f"{args.name!r}", details={"session_id": sid, "name": args.name})
    ctx.sessions.remove_tool(session, args.name)
    return {"deleted": True, "session_id": sid, "name": args.name}
