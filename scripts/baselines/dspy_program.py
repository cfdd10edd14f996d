"""The DSPy program every execute figure runs, on stock DSPy (no dspy_bridge): a Predict
over "question -> answer" and a DummyLM that always answers "42"."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import dspy
from dspy.clients.engines.dummy_engine import DummyEngine
from dspy.utils.dummies import DummyLM

SIGNATURE = "question -> answer"


class _SleepingEngine:
    """DummyLM's engine behind a fixed latency, slept as a blocking provider call is."""

    def __init__(self, inner: DummyEngine, latency_s: float) -> None:
        self.inner, self.latency_s = inner, latency_s

    def complete(self, request: Any) -> Any:
        time.sleep(self.latency_s)
        return self.inner.complete(request)

    def close(self) -> None:
        pass


class _AsyncSleepingEngine(_SleepingEngine):
    """The same latency awaited, as DSPy's async path awaits a provider."""

    async def complete(self, request: Any) -> Any:
        await asyncio.sleep(self.latency_s)
        return self.inner.complete(request)

    async def aclose(self) -> None:
        pass


def make_lm(answer: str = "42", latency_ms: int = 0) -> DummyLM:
    # The key "question" is in every prompt's last message, so every call gets the answer.
    lm = DummyLM({"question": {"answer": answer}})
    if latency_ms:
        # Engines without DummyEngine's legacy shortcut: DSPy formats a canonical request,
        # the path the worker's own mock engine takes.
        inner = DummyEngine(lm)
        lm._engine_spec = _SleepingEngine(inner, latency_ms / 1000)
        lm._async_engine_spec = _AsyncSleepingEngine(inner, latency_ms / 1000)
    return lm


def make_program(signature: str = SIGNATURE) -> dspy.Module:
    return dspy.Predict(signature)


def disable_cache() -> None:
    dspy.configure_cache(enable_memory_cache=False, enable_disk_cache=False)
