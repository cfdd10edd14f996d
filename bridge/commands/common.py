"""What the DSPy command families share: ids, references, lookups, replies."""

from __future__ import annotations

import secrets
from typing import Any

from dspy_bridge.commands.table import RequestContext
from dspy_bridge.domain.engine_port import Engine, LmHandle, ProgramHandle
from dspy_bridge.domain.lm import CheckedLm, LmConfig, check_lm
from dspy_bridge.domain.models import Args, ProgramId, SessionId
from dspy_bridge.domain.sessions import Session
from dspy_bridge.protocol.errors import BridgeError, ErrorType


class ProgramRef(Args):
    session_id: SessionId | None = None
    program_id: ProgramId


class SessionRef(Args):
    session_id: SessionId | None = None


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


def find_session_program(
    ctx: RequestContext, session_id: str | None, program_id: str
) -> tuple[Session, ProgramHandle]:
    """The session and its program, looked up once; `not_found` if either is missing."""
    store = ctx.sessions
    session = store.get(session_id)
    program = None if session is None else session.programs.get(program_id)
    if session is None or program is None:
        raise program_not_found(store.resolve_id(session_id), program_id)
    found: ProgramHandle = program
    return session, found


def find_program(ctx: RequestContext, session_id: str | None, program_id: str) -> ProgramHandle:
    return find_session_program(ctx, session_id, program_id)[1]


def new_program_id(session: Session | None) -> str:
    while True:
        candidate = "prog_" + secrets.token_hex(6)
        if session is None or candidate not in session.programs:
            return candidate


def lm_summary(lm: LmHandle | None) -> dict[str, Any] | None:
    return None if lm is None else lm.checked.public()


def describe(program: ProgramHandle) -> dict[str, Any]:
    return {
        "program_id": program.program_id,
        "session_id": program.session_id,
        "program_type": program.program_type,
        "options": program.options,
        "signature": program.spec.to_wire(),
        "lm": lm_summary(program.lm),
        "demos": len(program.demos()),
        "instructions": program.instructions(),
        "created_at": program.created_at,
    }
