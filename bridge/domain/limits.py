"""The bounds the operator sets by worker flags that the domain and the engine enforce."""

from __future__ import annotations

from dataclasses import dataclass

# Environment variables a session may name as its API key's source (--api-key-env-allow).
DEFAULT_API_KEY_ENV_ALLOW = ("*_API_KEY",)


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """How much the session store may hold (worker flags)."""

    max_sessions: int
    max_programs_per_session: int
    max_session_bytes: int
    max_stored_bytes: int


@dataclass(frozen=True, slots=True)
class CacheLimits:
    """What the operator lets callers of configure_cache ask for (worker flags)."""

    max_entries: int = 10_000
    max_bytes: int = 256 * 1024 * 1024
    disk_root: str | None = None
    max_disk_bytes: int = 1024 * 1024 * 1024
