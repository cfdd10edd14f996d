"""The per-call scope and DSPy's response cache as the bridge runs them.

A `CallScope` contextvar carries one call's cache partition (its session and LM config,
so tenants never share a cached answer) and its way to the host's functions, and
collects its LM history entries (for usage and cost), instead of DSPy's process-wide
history.
"""

from __future__ import annotations

import contextvars
import pickle
import threading
from dataclasses import dataclass, field
from typing import Any

import dspy.clients.base_lm as dspy_base_lm
from cachetools import LRUCache
from dspy.clients.cache import Cache
from dspy.dsp.utils.settings import thread_local_overrides

from dspy_bridge.domain.host import HostCaller, HostCallFailed


@dataclass(slots=True)
class CallScope:
    partition: str
    # The calling request's way to the host's functions (tools, rewards, mock generators).
    host: HostCaller | None = None
    # The call's `expected` output values, for a built-in reward without its own.
    expected: dict[str, Any] = field(default_factory=dict)
    # The first reward or mock generator that failed: the call's error even where DSPy
    # carried on (BestOfN counts a failed attempt and tries the next).
    host_failure: HostCallFailed | None = None
    # A compile's checkpoint: LM answers kept on disk, so a re-run after a crash finds
    # every answer the first run got (a `diskcache.Cache`, or None).
    checkpoint: Any = None
    # Set when the call's work should end: its request stopped, or a reward failed. A
    # thread running it ends at its next LM call (`engine.optimizers.stoppable`).
    stop: threading.Event = field(default_factory=threading.Event)
    cache_hits: int = 0
    entries: list[dict[str, Any]] = field(default_factory=list)


SCOPE: contextvars.ContextVar[CallScope | None] = contextvars.ContextVar(
    "bridge_call_scope", default=None
)
# The same scope as a DSPy setting: DSPy's ParallelExecutor (Evaluate, the optimizers)
# runs work in pool threads with DSPy's own settings copied over, not the caller's
# context, so the scope must travel with the settings too.
SCOPE_SETTING = "bridge_call_scope"


def current_scope() -> CallScope | None:
    """The calling request's scope: in its context, or in DSPy's settings in a thread
    DSPy started (tests/test_engine_fixes.py checks DSPy still copies its settings)."""
    scope = SCOPE.get()
    if scope is None:
        found = thread_local_overrides.get().get(SCOPE_SETTING)
        scope = found if isinstance(found, CallScope) else None
    return scope


class BridgeCache(Cache):  # type: ignore[misc]
    """DSPy's cache with keys partitioned by the calling session and LM config, so two
    tenants never share a cached answer (DSPy's own key ignores api_key and api_base),
    and a memory tier bounded in bytes (DSPy bounds it in entries only)."""

    def __init__(self, *, memory_max_bytes: int, **settings: Any) -> None:
        super().__init__(**settings)
        if self.enable_memory_cache:
            # DSPy's put/get index `self.memory_cache` (tests/test_engine_runtime.py checks).
            self.memory_cache = BoundedMemoryCache(settings["memory_max_entries"],
                                                   memory_max_bytes)

    def cache_key(self, request: dict[str, Any],
                  ignored_args_for_cache_key: list[str] | None = None) -> str:
        scope = current_scope()
        partitioned = {**request, "_bridge_partition": scope.partition if scope else ""}
        return str(super().cache_key(partitioned, ignored_args_for_cache_key))

    def get(self, request: dict[str, Any],
            ignored_args_for_cache_key: list[str] | None = None) -> Any:
        scope = current_scope()
        value = None
        if scope is not None and scope.checkpoint is not None:
            found = scope.checkpoint.get(self.cache_key(request, ignored_args_for_cache_key))
            value = None if found is None else self._prepare_cached_response(found)
        if value is None:
            value = super().get(request, ignored_args_for_cache_key)
        if value is not None and scope is not None:
            scope.cache_hits += 1
        return value

    def put(self, request: dict[str, Any], value: Any,
            ignored_args_for_cache_key: list[str] | None = None,
            enable_memory_cache: bool = True) -> None:
        super().put(request, value, ignored_args_for_cache_key, enable_memory_cache)
        scope = current_scope()
        if scope is not None and scope.checkpoint is not None:
            scope.checkpoint.set(self.cache_key(request, ignored_args_for_cache_key), value)


def answer_size(value: Any) -> int:
    """Bytes a cached answer stands for: its pickled size (what the disk cache stores)."""
    try:
        return len(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception:  # noqa: BLE001 - an unpicklable answer is sized by its text
        return len(repr(value))


class BoundedMemoryCache(LRUCache[Any, Any]):
    """DSPy's memory cache bounded in bytes as well as entries, least recent first out.
    An answer larger than the whole budget is not cached (never an error for the call)."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        super().__init__(maxsize=max_bytes, getsizeof=answer_size)
        self.max_entries = max_entries

    def __setitem__(self, key: Any, value: Any) -> None:
        try:
            super().__setitem__(key, value)  # sizes the answer once (pickling is not free)
        except ValueError:  # cachetools: "value too large" for the whole byte budget
            return
        while len(self) > self.max_entries:  # the new answer is the most recent: it stays
            self.popitem()


class HistorySink(list):  # type: ignore[type-arg]
    """Replaces DSPy's process-wide LM history: each entry goes to the scope of the call
    that made it (for its cost), and nothing accumulates in the worker."""

    def append(self, entry: Any) -> None:
        scope = current_scope()
        if scope is not None:
            scope.entries.append(entry)


def install_history_sink() -> None:
    dspy_base_lm.GLOBAL_HISTORY = HistorySink()
