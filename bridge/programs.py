"""DSPy commands: LM configuration, program pools per session, execution, usage, cache.

The handlers validate everything from the wire here, without DSPy (so `ready` stays
fast and a bad request is refused before any DSPy code sees it), then await the engine
(`bridge.engine`, the one module that imports DSPy) for the work itself.
"""

from __future__ import annotations

import secrets
import time
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError

from bridge.commands import CommandTable, RequestContext
from bridge.domain.engine_port import Engine, LmHandle, ProgramHandle
from bridge.domain.lm import CheckedLm, LmConfig, check_lm
from bridge.domain.models import Args, invalid_from
from bridge.domain.signatures import SignatureSpec, check_demos, check_inputs, parse_signature
from bridge.domain.usage import ModelUsage, merge_usage
from bridge.sessions import Session
from protocol import codec
from protocol.errors import BridgeError, ErrorType

table = CommandTable(needs_engine=True)

SessionId = Annotated[str, Field(min_length=1, max_length=256)]
ProgramId = Annotated[str, Field(min_length=1, max_length=256)]
DOCUMENT_FORMAT = "dspy-bridge/program"
DOCUMENT_VERSION = 1


# ===== LM configuration =====

class ConfigureLmArgs(LmConfig):
    session_id: SessionId | None = None


# ===== helpers =====


async def engine_of(ctx: RequestContext) -> Engine:
    module = await ctx.engine()
    engine: Engine = module.ENGINE
    return engine


def check_optional_lm(
    ctx: RequestContext, config: LmConfig | None, prefix: str
) -> CheckedLm | None:
    if config is None:
        return None
    return check_lm(config, prefix, ctx.options.api_key_env_allow)


def program_not_found(session_id: str, program_id: str) -> BridgeError:
    return BridgeError(
        ErrorType.NOT_FOUND,
        f"no program {program_id!r} in session {session_id!r}",
        details={"session_id": session_id, "program_id": program_id},
    )


def find_program(ctx: RequestContext, session_id: str | None, program_id: str) -> ProgramHandle:
    store = ctx.sessions
    session = store.get(session_id)
    program = None if session is None else session.programs.get(program_id)
    if program is None:
        raise program_not_found(store.resolve_id(session_id), program_id)
    found: ProgramHandle = program
    return found


def new_program_id(session: Session) -> str:
    while True:
        candidate = "prog_" + secrets.token_hex(6)
        if candidate not in session.programs:
            return candidate


def lm_summary(lm: LmHandle | None) -> dict[str, Any] | None:
    return None if lm is None else lm.checked.public()


def describe(program: ProgramHandle) -> dict[str, Any]:
    return {
        "program_id": program.program_id,
        "session_id": program.session_id,
        "program_type": program.program_type,
        "signature": program.spec.to_wire(),
        "lm": lm_summary(program.lm),
        "demos": len(program.demos()),
        "instructions": program.instructions(),
        "created_at": program.created_at,
    }


# ===== configure_lm =====


@table.command("configure_lm", ConfigureLmArgs)
async def configure_lm(ctx: RequestContext, args: ConfigureLmArgs) -> dict[str, Any]:
    config = LmConfig.model_validate(args.model_dump(exclude={"session_id"}, exclude_none=True))
    checked = check_lm(config, allowed_env=ctx.options.api_key_env_allow)
    engine = await engine_of(ctx)
    lm = await engine.lm(checked)
    store = ctx.sessions
    session = None if args.session_id is None else store.get_or_create(args.session_id)
    store.set_lm(session, lm)
    scope = "worker" if session is None else "session"
    return {"scope": scope, "session_id": args.session_id, "lm": checked.public()}


# ===== programs =====


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


class ProgramRef(Args):
    session_id: SessionId | None = None
    program_id: ProgramId


@table.command("get_program", ProgramRef)
async def get_program(ctx: RequestContext, args: ProgramRef) -> dict[str, Any]:
    return describe(find_program(ctx, args.session_id, args.program_id))


class SessionRef(Args):
    session_id: SessionId | None = None


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


# ===== execute_program =====


class CallConfig(Args):
    """Per-call LM settings; they override the LM's own for this call only."""

    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    max_tokens: Annotated[int, Field(gt=0, le=10_000_000)] | None = None
    stop: Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=16)] | None = None
    seed: int | None = None
    cache: bool | None = None
    rollout_id: Annotated[int, Field(ge=0)] | None = None


class ExecuteProgramArgs(Args):
    session_id: SessionId | None = None
    program_id: ProgramId
    inputs: dict[str, Any] = Field(default_factory=dict)
    lm: LmConfig | None = None
    config: CallConfig | None = None


@table.command("execute_program", ExecuteProgramArgs)
async def execute_program(ctx: RequestContext, args: ExecuteProgramArgs) -> dict[str, Any]:
    started = time.perf_counter()
    store = ctx.sessions
    program = find_program(ctx, args.session_id, args.program_id)
    session = store.require(args.session_id)
    limit = ctx.options.max_input_bytes
    size = len(codec.pack(args.inputs))
    if size > limit:
        raise BridgeError(
            ErrorType.LIMIT_EXCEEDED,
            f"the inputs take {size} bytes, over the limit of {limit}",
            details={"limit": "max_input_bytes", "max_input_bytes": limit, "size": size},
        )
    check_inputs(program.spec, args.inputs)
    override = check_optional_lm(ctx, args.lm, "lm")
    config = args.config.model_dump(exclude_none=True) if args.config else {}
    usage: dict[str, ModelUsage] = {}

    def record(per_model: dict[str, ModelUsage]) -> None:
        usage.update(per_model)
        session.usage.add(per_model)

    with store.using(session):  # from here on the session is never evicted under us
        engine = await engine_of(ctx)
        call_lm = await engine.lm(override, "lm.model") if override is not None else None
        lm, source = resolve_lm(call_lm, program, session, store.default_lm)
        breaker = store.breaker_for(lm)
        breaker.before_call(lm.model)
        try:
            outputs = await engine.execute(program, lm, args.inputs, config, record)
        except BridgeError as error:
            details = error.details or {}
            breaker.on_failure(retryable_provider_failure=error.type is ErrorType.LM_ERROR
                               and details.get("reason") == "provider_error" and error.retryable)
            raise
        except BaseException:
            breaker.on_abandoned()
            raise
        breaker.on_success()
    return {
        "outputs": outputs,
        "lm": lm.model,
        "lm_source": source,
        "usage": merge_usage(usage).to_wire(),
        "duration_ms": round((time.perf_counter() - started) * 1000, 3),
    }


def resolve_lm(call_lm: LmHandle | None, program: ProgramHandle,
               session: Session, default: Any) -> tuple[LmHandle, str]:
    """The call's `lm` > the program's > the session's > the worker default."""
    if call_lm is not None:
        return call_lm, "call"
    if program.lm is not None:
        return program.lm, "program"
    if session.lm is not None:
        return session.lm, "session"
    if default is not None:
        return default, "worker"
    raise BridgeError(
        ErrorType.LM_NOT_CONFIGURED,
        "no LM configured: pass `lm` with the call, create the program with one, or call "
        "configure_lm for this session or for the worker",
        details={"session_id": session.session_id, "program_id": program.program_id},
    )


# ===== sessions =====


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


# ===== export / import =====


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


# ===== usage =====


@table.command("get_usage", SessionRef)
async def get_usage(ctx: RequestContext, args: SessionRef) -> dict[str, Any]:
    store = ctx.sessions
    session = store.get(args.session_id)
    usage = {"models": {}, "total": ModelUsage().to_wire(), "since": None} if session is None \
        else session.usage.to_wire()
    return {"session_id": store.resolve_id(args.session_id), **usage}


@table.command("reset_usage", SessionRef)
async def reset_usage(ctx: RequestContext, args: SessionRef) -> dict[str, Any]:
    store = ctx.sessions
    session = store.get(args.session_id)
    if session is not None:
        session.usage.reset()
    return {"session_id": store.resolve_id(args.session_id), "reset": True}


# ===== cache =====


class ConfigureCacheArgs(Args):
    # The cache is worker-wide (its keys are partitioned by session); a session_id is
    # accepted like on every DSPy command and changes nothing.
    session_id: SessionId | None = None
    enable_memory: bool | None = None
    enable_disk: bool | None = None
    disk_dir: Annotated[str, Field(min_length=1, max_length=4096)] | None = None
    memory_max_entries: Annotated[int, Field(gt=0)] | None = None
    memory_max_bytes: Annotated[int, Field(gt=0)] | None = None
    disk_size_limit_bytes: Annotated[int, Field(gt=0)] | None = None


@table.command("configure_cache", ConfigureCacheArgs)
async def configure_cache(ctx: RequestContext, args: ConfigureCacheArgs) -> dict[str, Any]:
    engine = await engine_of(ctx)
    return engine.configure_cache(**args.model_dump(exclude_none=True, exclude={"session_id"}))
