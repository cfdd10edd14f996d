"""Program pools per session: create, get, list, delete, export, import.

The handlers validate everything from the wire without DSPy (so a bad request is refused
before any DSPy code sees it), then await the engine port for the work itself.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, ValidationError

from dspy_bridge.commands.common import (
    ProgramRef,
    SessionRef,
    check_optional_lm,
    describe,
    engine_of,
    find_program,
    find_session_program,
    new_program_id,
)
from dspy_bridge.commands.signatures import resolve_signature
from dspy_bridge.commands.table import CommandTable, RequestContext
from dspy_bridge.domain.documents import ProgramDocument, program_document
from dspy_bridge.domain.engine_port import Engine, LmHandle
from dspy_bridge.domain.lm import OptionalLm
from dspy_bridge.domain.models import Args, ProgramId, SessionId, invalid_from
from dspy_bridge.domain.program_options import check_options
from dspy_bridge.domain.signatures import SignatureSpec, check_demos, parse_signature
from dspy_bridge.protocol.errors import BridgeError, ErrorType, invalid_field

table = CommandTable(needs_engine=True)


def insert_program(
    ctx: RequestContext,
    engine: Engine,
    session_id: str | None,
    requested_id: str | None,
    spec: SignatureSpec,
    type_name: str,
    lm: LmHandle | None,
    demos: list[dict[str, Any]],
    state: dict[str, Any] | None,
    raw_options: dict[str, Any] | None,
    options_field: str = "options",
) -> dict[str, Any]:
    """Build and store a new program, answering what create and import answer. Nothing
    here awaits: the id check and the insertion are one step (and the host functions the
    options name are the session's at that step)."""
    store = ctx.sessions
    existing = store.get(session_id)
    tools = {} if existing is None else existing.tools
    # Everything is checked before a new session comes into being for the program.
    options = check_options(type_name, raw_options, tools, options_field)
    if existing is not None and requested_id is not None and requested_id in existing.programs:
        raise BridgeError(
            ErrorType.ALREADY_EXISTS,
            f"session {existing.session_id!r} already has a program {requested_id!r}",
            details={"session_id": existing.session_id, "program_id": requested_id},
        )
    if state is not None:
        state = engine.check_state(spec, engine.program_type(type_name), state, options,
                                   tools)
    program_id = requested_id or new_program_id(existing)
    program = engine.build_program(
        program_id, store.resolve_id(session_id), spec, type_name, lm, demos, state, options,
        tools,
    )
    session = existing or store.get_or_create(session_id)
    store.add_program(session, program)
    return {
        "program_id": program_id,
        "session_id": session.session_id,
        "program_type": program.program_type,
        "signature": spec.to_wire(),
        "options": program.options,
    }


class CreateProgramArgs(Args):
    session_id: SessionId | None = None
    program_id: ProgramId | None = None
    signature: Annotated[str, Field(min_length=1)] | dict[str, Any]
    program_type: Annotated[str, Field(min_length=1, max_length=100)] = "predict"
    options: dict[str, Any] | None = None
    # an operator module class's constructor arguments (short for options.init)
    init: dict[str, Any] | None = None
    lm: OptionalLm
    demos: Annotated[list[dict[str, Any]], Field(max_length=10_000)] | None = None
    instructions: Annotated[str, Field(max_length=50_000)] | None = None


@table.command("create_program", CreateProgramArgs)
async def create_program(ctx: RequestContext, args: CreateProgramArgs) -> dict[str, Any]:
    spec = resolve_signature(ctx, args.session_id, args.signature)
    if args.instructions is not None:
        spec = spec.model_copy(update={"instructions": args.instructions})
    checked = check_optional_lm(ctx, args.lm, "lm")
    engine = await engine_of(ctx)
    program_type = engine.program_type(args.program_type)
    options = args.options
    if args.init is not None:
        if options is not None:
            raise invalid_field("init", "give init or options, not both")
        options = {"init": args.init}
    if args.demos and not program_type.takes_demos:
        raise invalid_field("demos", f"a {program_type.name} program takes no demos")
    check_demos(spec, args.demos or [], program_type.outputs_added(options or {}))
    engine.signature(spec, program_type)  # DSPy's own name rules, before anything is stored
    lm = await engine.lm(checked, "lm.model") if checked is not None else None
    return insert_program(ctx, engine, args.session_id, args.program_id, spec,
                          program_type.name, lm, args.demos or [], None, options)


@table.command("get_program", ProgramRef)
async def get_program(ctx: RequestContext, args: ProgramRef) -> dict[str, Any]:
    return describe(find_program(ctx, args.session_id, args.program_id))


@table.command("list_programs", SessionRef)
async def list_programs(ctx: RequestContext, args: SessionRef) -> dict[str, Any]:
    store = ctx.sessions
    session = store.get(args.session_id)
    programs = [] if session is None else [
        {"program_id": p.program_id, "program_type": p.program_type,
         "signature": p.spec.to_wire(), "created_at": p.created_at}
        for p in session.programs.values()
    ]
    return {"session_id": store.resolve_id(args.session_id), "programs": programs}


@table.command("delete_program", ProgramRef)
async def delete_program(ctx: RequestContext, args: ProgramRef) -> dict[str, Any]:
    session, program = find_session_program(ctx, args.session_id, args.program_id)
    ctx.sessions.remove_program(session, program.program_id)
    return {"deleted": True, "session_id": program.session_id, "program_id": program.program_id}


@table.command("export_program", ProgramRef)
async def export_program(ctx: RequestContext, args: ProgramRef) -> dict[str, Any]:
    program = find_program(ctx, args.session_id, args.program_id)
    engine = await engine_of(ctx)
    return {"document": program_document(program, engine.export_state(program),
                                         engine.dspy_version)}


class ImportProgramArgs(Args):
    session_id: SessionId | None = None
    program_id: ProgramId | None = None
    document: dict[str, Any]


@table.command("import_program", ImportProgramArgs)
async def import_program(ctx: RequestContext, args: ImportProgramArgs) -> dict[str, Any]:
    try:
        document = ProgramDocument.model_validate(args.document)
    except ValidationError as exc:
        raise invalid_from(exc, "document") from None
    spec = parse_signature(document.signature, "document.signature")
    checked = check_optional_lm(ctx, document.lm, "document.lm")
    engine = await engine_of(ctx)
    program_type = engine.program_type(document.program_type, "document.program_type")
    lm = await engine.lm(checked, "document.lm.model") if checked is not None else None
    return insert_program(ctx, engine, args.session_id, args.program_id or document.program_id,
                          spec, program_type.name, lm, [], document.state, document.options,
                          "document.options")
