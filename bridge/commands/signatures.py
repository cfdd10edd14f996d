"""Named signatures: register once, create programs from them by `{ref: name}`.

Without `session_id` a signature is the worker's, shared by every session; with one it
is that session's own, and shadows a worker signature of the same name there. A
signature is checked as create_program checks one, and DSPy's own name rules apply when
a program is made from it. Like every DSPy command, these answer engine_unavailable in a
worker whose DSPy failed to load (PROTOCOL.md), though they need no DSPy themselves.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from dspy_bridge.commands.common import engine_of
from dspy_bridge.commands.table import CommandTable, RequestContext
from dspy_bridge.domain.models import Args, SessionId
from dspy_bridge.domain.sessions import NamedSignature, Session
from dspy_bridge.domain.signatures import SignatureSpec, parse_signature
from dspy_bridge.protocol import codec
from dspy_bridge.protocol.errors import BridgeError, ErrorType, invalid_field

table = CommandTable(needs_engine=True)

SignatureName = Annotated[str, Field(min_length=1, max_length=100,
                                     pattern=r"^[A-Za-z_][A-Za-z0-9_.\-]*$")]


class RegisterSignatureArgs(Args):
    session_id: SessionId | None = None
    name: SignatureName
    signature: Annotated[str, Field(min_length=1)] | dict[str, Any]


class SignatureRef(Args):
    session_id: SessionId | None = None
    name: SignatureName


class SignatureScope(Args):
    session_id: SessionId | None = None


def _scope(ctx: RequestContext, session_id: str | None, create: bool) -> Session | None:
    if session_id is None:
        return None
    return ctx.sessions.get_or_create(session_id) if create else ctx.sessions.require(session_id)


def _wire(named: NamedSignature, scope: str) -> dict[str, Any]:
    return {"name": named.name, "scope": scope, "signature": named.spec.to_wire(),
            "registered_at": named.registered_at}


def _not_found(name: str, session_id: str | None) -> BridgeError:
    where = "the worker" if session_id is None else f"session {session_id!r}"
    return BridgeError(ErrorType.NOT_FOUND, f"{where} has no signature {name!r}",
                       details={"name": name, "session_id": session_id})


@table.command("register_signature", RegisterSignatureArgs)
async def register_signature(ctx: RequestContext, args: RegisterSignatureArgs) -> dict[str, Any]:
    signature = args.signature
    if isinstance(signature, dict) and set(signature) == {"class"}:  # an operator's class
        if not isinstance(signature["class"], str):
            raise invalid_field("signature.class", "must be a class's name (MODULE:Class)")
        engine = await engine_of(ctx)
        signature = engine.signature_class(signature["class"], "signature.class")
    spec = parse_signature(signature)
    named = NamedSignature(args.name, spec, len(codec.pack(spec.to_wire())))
    session = _scope(ctx, args.session_id, create=True)
    replaced = args.name in ctx.sessions.signatures_of(session)
    ctx.sessions.add_signature(session, named)
    scope = "worker" if session is None else "session"
    return {**_wire(named, scope), "replaced": replaced}


@table.command("get_signature", SignatureRef)
async def get_signature(ctx: RequestContext, args: SignatureRef) -> dict[str, Any]:
    session = ctx.sessions.get(args.session_id) if args.session_id is not None else None
    named = ctx.sessions.find_signature(session, args.name)
    if named is None:
        raise _not_found(args.name, args.session_id)
    own = session is not None and args.name in session.signatures
    return _wire(named, "session" if own else "worker")


@table.command("list_signatures", SignatureScope)
async def list_signatures(ctx: RequestContext, args: SignatureScope) -> dict[str, Any]:
    """The worker's signatures, and the session's own (which shadow them) if one is named."""
    session = ctx.sessions.get(args.session_id) if args.session_id is not None else None
    visible = {name: _wire(named, "worker") for name, named in ctx.sessions.signatures.items()}
    if session is not None:
        visible |= {name: _wire(named, "session") for name, named in session.signatures.items()}
    return {"session_id": args.session_id, "signatures": list(visible.values())}


@table.command("delete_signature", SignatureRef)
async def delete_signature(ctx: RequestContext, args: SignatureRef) -> dict[str, Any]:
    session = _scope(ctx, args.session_id, create=False)
    if args.name not in ctx.sessions.signatures_of(session):
        raise _not_found(args.name, args.session_id)
    ctx.sessions.remove_signature(session, args.name)
    return {"deleted": True, "name": args.name, "session_id": args.session_id}


def resolve_signature(ctx: RequestContext, session_id: str | None,
                      signature: str | dict[str, Any], field: str = "signature") -> SignatureSpec:
    """A signature given inline, or `{ref: name}`: the session's of that name, else the
    worker's."""
    if isinstance(signature, dict) and set(signature) == {"ref"}:
        name = signature["ref"]
        if not isinstance(name, str):
            raise invalid_field(f"{field}.ref", "must be a signature's name (a string)")
        session = ctx.sessions.get(session_id)
        named = ctx.sessions.find_signature(session, name)
        if named is None:
            raise invalid_field(f"{field}.ref", f"no signature named {name!r} is registered "
                                "for this session or the worker")
        return named.spec
    return parse_signature(signature, field)
