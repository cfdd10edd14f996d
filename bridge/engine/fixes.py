"""Narrow fixes to DSPy's own costs, installed when the engine starts.

Each relies on a detail of DSPy's code; `tests/test_engine_fixes.py` checks each detail,
so an upgrade that changes one fails loudly instead of silently losing the fix.

1. Thread hops. Every async LM call makes four or five `asyncio.to_thread` hops in
   `dspy.clients.execution` (prepare the call, cache get, pricing, cache put): each costs
   a pool thread's wake-up and a loop round trip — about half of a mock call's CPU. They
   are cheap, non-blocking steps while the cache lives in memory, so they run inline
   then; with the disk cache on, the cache steps keep their threads (they read disk).
   Upstream would need an option to run them inline, or an async cache.
2. TypeAdapters. Formatting a prompt builds a new pydantic `TypeAdapter` for every value
   (`dspy.adapters.utils`), ~40 µs each; one per type is kept instead. Upstream would
   need the same cache.
3. Log lines. DSPy's loggers write plain text to stderr through their own handler
   (`dspy_handler`, not propagated); the worker's stderr carries JSON lines only, so the
   handler goes and DSPy's records reach the worker's JSON handler on the root logger.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import dspy.adapters.utils as adapter_utils
from dspy.clients import execution
from pydantic import TypeAdapter

T = TypeVar("T")

# The steps of DSPy's async call path that are CPU-only (no I/O) with a memory cache.
ALWAYS_INLINE: frozenset[Callable[..., Any]] = frozenset(
    {execution.prepare, execution._price_result, execution._price_legacy}
)
CACHE_STEPS: frozenset[Callable[..., Any]] = frozenset({execution._cached, execution._store})

_threaded_to_thread = asyncio.to_thread
_disk_cache_on = False


async def _to_thread(func: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """`asyncio.to_thread`, except DSPy's CPU-only steps run inline (see the module doc).
    Every other function still goes to a thread."""
    if func in ALWAYS_INLINE or (func in CACHE_STEPS and not _disk_cache_on):
        # in a copy of the context, as to_thread runs it: its context changes stay there
        return contextvars.copy_context().run(func, *args, **kwargs)
    return await _threaded_to_thread(func, *args, **kwargs)


def set_disk_cache(enabled: bool) -> None:
    """The cache steps read and write disk when the disk cache is on: threads again."""
    global _disk_cache_on
    _disk_cache_on = enabled


@functools.lru_cache(maxsize=512)
def _adapter_for(annotation: Any) -> TypeAdapter[Any]:
    return TypeAdapter(annotation)


def _shared_type_adapter(annotation: Any, *args: Any, **kwargs: Any) -> TypeAdapter[Any]:
    if args or kwargs:
        return TypeAdapter(annotation, *args, **kwargs)
    try:
        return _adapter_for(annotation)
    except TypeError:  # an unhashable annotation: build one as DSPy did
        return TypeAdapter(annotation)


def install() -> None:
    # DSPy's call path imports asyncio inside its functions (base_lm, lm), so the one
    # place all its hops go through is the module's to_thread; ours forwards the rest.
    asyncio.to_thread = _to_thread
    adapter_utils.TypeAdapter = _shared_type_adapter
    route_dspy_logs()


DSPY_HANDLER_NAME = "dspy_handler"


def route_dspy_logs() -> None:
    logger = logging.getLogger("dspy")
    for handler in list(logger.handlers):
        if handler.get_name() == DSPY_HANDLER_NAME:
            logger.removeHandler(handler)
    logger.propagate = True
