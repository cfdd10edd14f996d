"""Loads the DSPy engine once, in the background, as a state every request can ask about.

The import runs in its own thread so `ready` and control commands never wait for it
(after `before`: what is best loaded there too, off the loop), giving way to the loop
at each module (`give_way`: see `serve/priority`).
Its outcome is settled on the event loop: `loading`, then `ready` or `failed` for good.
A request waiting for it waits through `asyncio.shield`, so a request that times out or
is cancelled while DSPy loads stops waiting without cancelling the load itself.
"""

from __future__ import annotations

import asyncio
import importlib
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from types import ModuleType
from typing import Literal

from dspy_bridge.protocol.errors import BridgeError, ErrorType

EngineState = Literal["loading", "ready", "failed"]


class EngineLoader:
    def __init__(
        self,
        module_name: str,
        on_loaded: Callable[[ModuleType], None],
        on_failed: Callable[[BridgeError], None],
        give_way: Callable[[], AbstractContextManager[None]],
        before: Callable[[], object] = lambda: None,
    ) -> None:
        self._module_name = module_name
        self._before = before
        self._give_way = give_way
        self._on_loaded = on_loaded
        self._on_failed = on_failed
        self._module: ModuleType | None = None
        self._error: BridgeError | None = None
        self._settled: asyncio.Future[None] | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._settled = loop.create_future()
        threading.Thread(
            target=self._load, args=(loop,), name="engine-loader", daemon=True
        ).start()

    def _load(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            self._before()
            with self._give_way():
                module = importlib.import_module(self._module_name)
        except BaseException as exc:  # noqa: BLE001 - a failed load is a state, reported
            loop.call_soon_threadsafe(self._settle, None, exc)
        else:
            loop.call_soon_threadsafe(self._settle, module, None)

    def _settle(self, module: ModuleType | None, exc: BaseException | None) -> None:
        if module is not None:
            try:
                self._on_loaded(module)
            except Exception as start_failure:  # noqa: BLE001 - a failed start is a failed load
                module, exc = None, start_failure
        if exc is not None:
            self._error = BridgeError(
                ErrorType.ENGINE_UNAVAILABLE,
                f"DSPy failed to load in this worker: {type(exc).__name__}: {exc}"[:2000],
                details={"error_class": type(exc).__name__},
            )
            self._on_failed(self._error)
        else:
            self._module = module
        assert self._settled is not None
        self._settled.set_result(None)

    @property
    def state(self) -> EngineState:
        if self._module is not None:
            return "ready"
        return "failed" if self._error is not None else "loading"

    async def get(self) -> ModuleType:
        """The engine module once loaded; `engine_unavailable` if its load failed."""
        if self._module is None and self._error is None:
            assert self._settled is not None, "EngineLoader.start() was not called"
            await asyncio.shield(self._settled)
        if self._error is not None:
            raise self.error()
        assert self._module is not None
        return self._module

    def error(self) -> BridgeError:
        """A fresh copy of the failed load's error (each reply gets its own)."""
        assert self._error is not None, "the engine did not fail"
        return BridgeError(self._error.type, self._error.message, details=self._error.details)
