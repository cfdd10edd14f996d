"""Program pools per session: create, get, list, delete, export, import.

The handlers validate everything from the wire without DSPy (so a bad request is refused
before any DSPy code sees it), then await the engine port for the work itself.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError

from dspy_bridge.commands.common import (
    ProgramId,
    ProgramRef,
    SessionId,
    SessionRef,
    check_optional_lm,
    describe,
    engine_of,
    find_program,
    new_program_id,
)
from dspy_bridge.commands.table import CommandTable, RequestContext
from dspy_bridge.domain.lm import LmConfig
from dspy_bridge.domain.models import Args, invalid_from
from dspy_bridge.domain.signatures import SignatureSpec, check_demos, parse_signature
from dspy_bridge.protocol.errors import BridgeError, ErrorType

table = CommandTable(needs_engine=True)


DOCUMENT_FORMAT = "dspy-bridge/program"
DOCUMENT_VERSION = 1



def created_reply(
    program_id: str, session_id: str, program_type: str, spec: SignatureSpec
) -> dict[str, Any]:
    """What create_program and import_program answer."""
    return {
        "program_id": program_id,
        "session_id": session_id,
        "program_type": program_type,
        "signature": spec.to_wire(),
    }


class CreateProgramArgs(Args):
    session_id: SessionId | None = None
    program_id: ProgramId | None = None
    signature: Annotated[str, Field(min_length=1)] | dict[str, Any]
    program_type: Annotated[str, Field(min_length=1, max_length=100)] = "predict"
    lm: LmConfig | None = None
    demos: Annotated[list[dict[str, Any]], Field(max_length=10_000)] | None = None
    instructions: Annotated[str, Field(max_length=50_000)] | None = None


@table.command("create_program", CreateProgramArgs)
async def create_program(ctx: RequestContext, args: CreateProgramArgs) -> dict[str, Any]:
    spec = parse_signature(args.signature)
    if args.instructions is not None:
        spec = spec.model_copy(update={"instructions": args.instructions})
    checked = check_optional_lm(ctx, args.lm, "lm")
    engine = await engine_of(ctx)
    program_type = engine.program_type(args.program_type)
    check_demos(spec, args.demos or [], program_type.extra_outputs)
    engine.signature(spec, program_type)  # DSPy's own name rules, before anything is stored
    lm = await engine.lm(checked, "lm.model") if checked is not None else None
    # No await from here on: the id check and the insertion are one step.
    store = ctx.sessions
    session = store.get_or_create(args.session_id)
    if args.program_id is not None and args.program_id in session.programs:
        raise BridgeError(
            ErrorType.ALREADY_EXISTS,
            f"session {session.session_id!r} already has a program {args.program_id!r}",
            details={"session_id": session.session_id, "program_id": args.program_id},
        )
    program_id = args.program_id or new_program_id(session)
    program = engine.build_program(
        program_id, session.session_id, spec, program_type.name, lm, args.demos or [], None
    )
    store.add_program(session, program)
    return created_reply(program_id, session.session_id, program.program_type, spec)


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
    program = find_program(ctx, args.session_id, args.program_id)
    store = ctx.sessions
    store.remove_program(store.require(args.session_id), program.program_id)
    return {"deleted": True, "session_id": program.session_id, "program_id": program.program_id}


@table.command("export_program", ProgramRef)
async def export_program(ctx: RequestContext, args: ProgramRef) -> dict[str, Any]:
    program = find_program(ctx, args.session_id, args.program_id)
    engine = await engine_of(ctx)
    lm, omitted = (None, []) if program.lm is None else program.lm.checked.exportable()
    document: dict[str, Any] = {
        "format": DOCUMENT_FORMAT,
        "version": DOCUMENT_VERSION,
        "program_id": program.program_id,
        "program_type": program.program_type,
        "signature": program.spec.to_wire(),
        "lm": lm,
        "state": engine.export_state(program),
        "dspy_version": engine.dspy_version,
        "secrets_omitted": omitted,
    }
    return {"document": document}


class ProgramDocument(Args):
    format: Literal["dspy-bridge/program"]
    version: Literal[1]
    program_id: ProgramId | None = None
    program_type: Annotated[str, Field(min_length=1, max_length=100)]
    signature: dict[str, Any]
    lm: LmConfig | None = None
    state: dict[str, Any]
    dspy_version: str | None = None
    secrets_omitted: list[str] = Field(default_factory=list)


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
    state = engine.check_state(spec, program_type, document.state)
    lm = await engine.lm(checked, "document.lm.model") if checked is not None else None
    # No await from here on: the id check and the insertion are one step.
    store = ctx.sessions
    session = store.get_or_create(args.session_id)
    program_id = args.program_id or document.program_id or new_program_id(session)
    if program_id in session.programs:
        raise BridgeError(
            ErrorType.ALREADY_EXISTS,
            f"session {session.session_id!r} already has a program {program_id!r}",
            details={"session_id": session.session_id, "program_id": program_id},
        )
    program = engine.build_program(program_id, session.session_id, spec, program_type.name, lm,
                                   [], state)
    store.add_program(session, program)
    return created_reply(program_id, session.session_id, program.program_type, spec)
