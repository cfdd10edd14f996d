"""Sessions: per-tenant LM, program pool and usage book; the worker default LM; breakers.

Nothing here imports DSPy: the LM and program objects the engine builds are held as
opaque handles, so the store (and `get_stats`, which reads it) works before DSPy loads.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dspy_bridge.domain.breakers import BreakerRegistry, BreakerSettings, CircuitBreaker
from dspy_bridge.domain.history import CallHistory
from dspy_bridge.domain.host import MAX_TOOLS, HostFunction
from dspy_bridge.domain.limits import SessionLimits
from dspy_bridge.domain.usage import UsageBook
from dspy_bridge.protocol.errors import BridgeError, ErrorType

if TYPE_CHECKING:  # their pydantic models need not be built before the first reply
    from dspy_bridge.domain.engine_port import LmHandle, ProgramHandle
    from dspy_bridge.domain.signatures import SignatureSpec

DEFAULT_SESSION = "default"
MAX_SIGNATURES = 1_000  # per session, and for the worker


@dataclass(frozen=True, slots=True)
class NamedSignature:
    """A signature registered under a name (register_signature), with its stored size."""

    name: str
    spec: SignatureSpec
    stored_bytes: int
    registered_at: float = field(default_factory=time.time)


@dataclass(slots=True)
class Session:
    session_id: str
    lm: Any = None
    programs: dict[str, Any] = field(default_factory=dict)
    usage: UsageBook = field(default_factory=UsageBook)
    signatures: dict[str, NamedSignature] = field(default_factory=dict)
    tools: dict[str, HostFunction] = field(default_factory=dict)
    history: CallHistory = field(default_factory=CallHistory)
    created_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.time)
    last_used_monotonic: float = field(default_factory=time.monotonic)
    busy: int = 0
    # msgpack bytes of what the session stores: its LM config and its programs.
    stored_bytes: int = 0

    def touch(self) -> None:
        self.last_used = time.time()
        self.last_used_monotonic = time.monotonic()

    def to_wire(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "programs": len(self.programs),
            "tools": len(self.tools),
            "lm": None if self.lm is None else self.lm.model,
            "created_at": self.created_at,
            "last_used": self.last_used,
            "idle_s": round(time.monotonic() - self.last_used_monotonic, 3),
            "in_flight": self.busy,
            "stored_bytes": self.stored_bytes,
        }


class SessionStore:
    """Every session of the worker, the worker-wide default LM and the breakers."""

    def __init__(self, limits: SessionLimits) -> None:
        self.limits = limits
        self.sessions: dict[str, Session] = {}
        self.default_lm: Any = None
        self.signatures: dict[str, NamedSignature] = {}  # worker-level: every session's
        self.breakers = BreakerRegistry()
        self.evicted = 0
        self.stored_bytes = 0  # every session's, and the default LM's

    @staticmethod
    def resolve_id(session_id: str | None) -> str:
        return DEFAULT_SESSION if session_id is None else session_id

    def get(self, session_id: str | None) -> Session | None:
        return self.sessions.get(self.resolve_id(session_id))

    def get_or_create(self, session_id: str | None) -> Session:
        sid = self.resolve_id(session_id)
        session = self.sessions.get(sid)
        if session is not None:
            session.touch()
            return session
        if len(self.sessions) >= self.limits.max_sessions:
            raise BridgeError(
                ErrorType.LIMIT_EXCEEDED,
                f"the worker already holds {self.limits.max_sessions} sessions; "
                "end one (end_session) before starting another",
                details={"limit": "max_sessions", "max_sessions": self.limits.max_sessions},
            )
        session = Session(sid)
        self.sessions[sid] = session
        return session

    def require(self, session_id: str | None) -> Session:
        session = self.get(session_id)
        if session is None:
            sid = self.resolve_id(session_id)
            raise BridgeError(
                ErrorType.NOT_FOUND, f"no session {sid!r}", details={"session_id": sid}
            )
        return session

    def end(self, session_id: str | None) -> Session:
        session = self.require(session_id)
        self._drop(session)
        return session

    def _drop(self, session: Session) -> None:
        del self.sessions[session.session_id]
        self.stored_bytes -= session.stored_bytes

    # ----- what sessions store, bounded in bytes -----

    def check_room(self, session: Session | None, added: int, removed: int = 0) -> None:
        """Raise limit_exceeded if storing `added` bytes (in place of `removed`) would take
        the session or the worker past its byte limit."""
        growth = added - removed
        if session is not None and session.stored_bytes + growth > self.limits.max_session_bytes:
            limit = self.limits.max_session_bytes
            raise BridgeError(
                ErrorType.LIMIT_EXCEEDED,
                f"session {session.session_id!r} would store {session.stored_bytes + growth} "
                f"bytes, over the limit of {limit}",
                retryable=False,
                details={"limit": "max_session_bytes", "max_session_bytes": limit,
                         "session_id": session.session_id, "stored_bytes": session.stored_bytes,
                         "size": added},
            )
        if self.stored_bytes + growth > self.limits.max_stored_bytes:
            limit = self.limits.max_stored_bytes
            raise BridgeError(
                ErrorType.LIMIT_EXCEEDED,
                f"the worker's sessions would store {self.stored_bytes + growth} bytes, over "
                f"the limit of {limit}",
                details={"limit": "max_stored_bytes", "max_stored_bytes": limit,
                         "stored_bytes": self.stored_bytes, "size": added},
            )

    def set_lm(self, session: Session | None, lm: LmHandle | None) -> None:
        """Make `lm` the session's LM (or, without a session, the worker default)."""
        old = session.lm if session is not None else self.default_lm
        removed = 0 if old is None else old.stored_bytes
        added = 0 if lm is None else lm.stored_bytes
        self.check_room(session, added, removed)
        if session is None:
            self.default_lm = lm
        else:
            session.lm = lm
        self._count_stored(session, added - removed)

    def add_program(self, session: Session, program: ProgramHandle) -> None:
        """Store a program whose id the caller checked is free (no await in between)."""
        self.check_program_room(session)
        self.check_room(session, program.stored_bytes)
        session.programs[program.program_id] = program
        self._count_stored(session, program.stored_bytes)

    def remove_program(self, session: Session, program_id: str) -> None:
        program = session.programs.pop(program_id)
        self._count_stored(session, -program.stored_bytes)

    # ----- named signatures: a session's own, then the worker's -----

    def signatures_of(self, session: Session | None) -> dict[str, NamedSignature]:
        return self.signatures if session is None else session.signatures

    def add_signature(self, session: Session | None, named: NamedSignature) -> None:
        """Register (or replace) a named signature for the session, or the worker."""
        table = self.signatures_of(session)
        old = table.get(named.name)
        if old is None and len(table) >= MAX_SIGNATURES:
            raise BridgeError(
                ErrorType.LIMIT_EXCEEDED,
                f"already {MAX_SIGNATURES} named signatures here; delete one first",
                details={"limit": "max_signatures", "max_signatures": MAX_SIGNATURES},
            )
        removed = 0 if old is None else old.stored_bytes
        self.check_room(session, named.stored_bytes, removed)
        table[named.name] = named
        self._count_stored(session, named.stored_bytes - removed)

    def remove_signature(self, session: Session | None, name: str) -> NamedSignature:
        named = self.signatures_of(session).pop(name)
        self._count_stored(session, -named.stored_bytes)
        return named

    # ----- host functions: a session's own -----

    def add_tools(self, session: Session, functions: list[HostFunction]) -> None:
        """Declare (or replace) host functions for the session: all of them, or none."""
        names = {function.name for function in functions}
        if len(names | set(session.tools)) > MAX_TOOLS:
            raise BridgeError(
                ErrorType.LIMIT_EXCEEDED,
                f"session {session.session_id!r} would declare more than {MAX_TOOLS} host "
                "functions; delete some first",
                retryable=False,
                details={"limit": "max_tools", "max_tools": MAX_TOOLS,
                         "session_id": session.session_id},
            )
        added = sum(function.stored_bytes for function in functions)
        removed = sum(session.tools[name].stored_bytes for name in names if name in session.tools)
        self.check_room(session, added, removed)
        for function in functions:
            session.tools[function.name] = function
        self._count_stored(session, added - removed)

    def remove_tool(self, session: Session, name: str) -> HostFunction:
        function = session.tools.pop(name)
        self._count_stored(session, -function.stored_bytes)
        return function

    def _count_stored(self, session: Session | None, change: int) -> None:
        """What the session (none: the worker itself) and the worker store, changed."""
        if session is not None:
            session.stored_bytes += change
        self.stored_bytes += change

    def find_signature(self, session: Session | None, name: str) -> NamedSignature | None:
        """The session's signature of that name, else the worker's."""
        if session is not None and name in session.signatures:
            return session.signatures[name]
        return self.signatures.get(name)

    @contextmanager
    def using(self, session: Session) -> Iterator[Session]:
        """Mark the session busy (never evicted while in use) for the block."""
        session.busy += 1
        session.touch()
        try:
            yield session
        finally:
            session.busy -= 1
            session.touch()

    def check_program_room(self, session: Session) -> None:
        limit = self.limits.max_programs_per_session
        if len(session.programs) >= limit:
            raise BridgeError(
                ErrorType.LIMIT_EXCEEDED,
                f"session {session.session_id!r} already holds {limit} programs; "
                "delete one before creating another",
                details={"limit": "max_programs_per_session", "max_programs_per_session": limit,
                         "session_id": session.session_id},
            )

    def breaker_for(self, lm: Any) -> CircuitBreaker:
        settings = getattr(lm, "breaker_settings", None) or BreakerSettings()
        return self.breakers.get(lm.fingerprint, lm.model, settings)

    def stats(self) -> dict[str, Any]:
        return {
            "sessions": len(self.sessions),
            "programs": sum(len(s.programs) for s in self.sessions.values()),
            "sessions_evicted": self.evicted,
            "stored_bytes": self.stored_bytes,
            "default_lm": None if self.default_lm is None else self.default_lm.model,
            "circuit_breakers": self.breakers.to_wire(),
        }

    # ----- idle eviction (the serve layer's sweeper decides when) -----

    def evict_idle(self, ttl_s: float, now: float) -> list[tuple[Session, float]]:
        """Drop the sessions unused for `ttl_s` seconds and not busy; each with its idle
        time (monotonic seconds)."""
        evicted = []
        for session in list(self.sessions.values()):
            idle = now - session.last_used_monotonic
            if session.busy == 0 and idle >= ttl_s:
                self._drop(session)
                self.evicted += 1
                evicted.append((session, idle))
        return evicted
