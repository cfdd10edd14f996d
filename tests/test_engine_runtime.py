"""The engine in-process, for what a worker cannot show from outside: a module without an
async path runs in a thread, and cancelling a call stops the mock's awaited latency."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import dspy_bridge.engine as engine_module
from dspy_bridge.domain.lm import LmConfig, check_lm
from dspy_bridge.domain.signatures import parse_signature
from dspy_bridge.domain.usage import ModelUsage
from dspy_bridge.protocol.errors import BridgeError

dspy = engine_module.dspy
ENGINE = engine_module.ENGINE


def _lm(**options: Any) -> Any:
    return ENGINE.build_lm(check_lm(LmConfig.model_validate(
        {"model": "mock/runtime", "num_retries": 0, "cache": False, "extra": options})))


def _program(program_id: str) -> Any:
    spec = parse_signature("question -> answer")
    return ENGINE.build_program(program_id, "runtime", spec, "predict", None, [], None, {}, {})


class SyncOnly(dspy.Module):  # type: ignore[misc]
    """A module with forward() alone: no async path."""

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, **kwargs: Any) -> Any:
        return self.inner(**kwargs)


def test_a_module_without_an_async_path_runs_in_a_thread() -> None:
    program = _program("sync")
    program.module = SyncOnly(program.module)
    assert not hasattr(program.module, "aforward")
    usage: dict[str, ModelUsage] = {}
    run = asyncio.run(ENGINE.execute(program, _lm(default="from a thread"),
                                     {"question": "q"}, {}, usage.update))
    assert run.outputs == {"answer": "from a thread"}
    assert usage["mock/runtime"].requests == 1 and usage["mock/runtime"].prompt_tokens > 0


def test_cancelling_a_call_stops_the_mock_latency() -> None:
    lm = _lm(latency_ms=60_000)
    program = _program("slow")
    recorded: list[dict[str, ModelUsage]] = []

    async def scenario() -> float:
        task = asyncio.create_task(ENGINE.execute(program, lm, {"question": "q"}, {},
                                                  recorded.append))
        while lm.lm.engine.calls == 0:  # until the mock has been reached
            await asyncio.sleep(0)
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - started

    assert asyncio.run(scenario()) < 1.0
    assert len(recorded) == 1  # usage is still accounted for the abandoned call


def test_timeout_around_a_call_stops_it() -> None:
    lm = _lm(latency_ms=60_000)
    program = _program("timeout")

    async def scenario() -> None:
        async with asyncio.timeout(0.2):
            await ENGINE.execute(program, lm, {"question": "q"}, {}, lambda usage: None)

    started = time.monotonic()
    with pytest.raises(TimeoutError):
        asyncio.run(scenario())
    assert time.monotonic() - started < 2.0


def test_provider_error_keeps_dspy_classification() -> None:
    lm = _lm(fail={"error": "server"})
    with pytest.raises(BridgeError) as raised:
        asyncio.run(ENGINE.execute(_program("err"), lm, {"question": "q"}, {},
                                   lambda usage: None))
    assert raised.value.retryable is True
    assert raised.value.details is not None
    assert raised.value.details["error_class"] == "LMServerError"


def test_the_names_dspy_calls_programs_with_are_read_from_dspy() -> None:
    """If a DSPy upgrade renames these parameters, the refusal at create_program must
    follow: this fails loudly so the change is looked at."""
    from dspy_bridge.engine.programs import PROGRAM_TYPES, call_parameter_names

    for program_type in PROGRAM_TYPES.values():
        assert {"self", "instance", "base"} <= call_parameter_names(program_type)


def test_the_memory_cache_dspy_uses_is_bounded_in_bytes() -> None:
    """BridgeCache swaps DSPy's memory tier for a byte-bounded one; this fails if DSPy
    stops reading `Cache.memory_cache` for get/put."""
    from dspy_bridge.engine.scope import BoundedMemoryCache, BridgeCache

    cache = BridgeCache(enable_disk_cache=False, enable_memory_cache=True, disk_cache_dir=None,
                        memory_max_entries=100, memory_max_bytes=10_000)
    assert isinstance(cache.memory_cache, BoundedMemoryCache)
    cache.put({"prompt": "big"}, "x" * 20_000)  # larger than the whole budget: not kept
    assert cache.get({"prompt": "big"}) is None
    for index in range(50):
        cache.put({"prompt": index}, "y" * 1_000)
    assert cache.memory_cache.currsize <= 10_000
    assert cache.get({"prompt": 49}) == "y" * 1_000
    assert cache.get({"prompt": 0}) is None


@given(st.text(max_size=40), st.lists(st.text(max_size=40), max_size=4))
def test_the_mock_counts_a_prompt_by_parts_as_if_joined(system: str, texts: list[str]) -> None:
    from dspy_bridge.engine.mock import count_prompt_tokens, count_tokens

    assert count_prompt_tokens(system, texts) == count_tokens(system + "".join(texts))


@given(st.tuples(*[st.integers(min_value=0, max_value=2**40)] * 6),
       st.none() | st.floats(min_value=0, max_value=1e6))
def test_usage_on_the_wire_is_every_counter_and_the_rounded_cost(
    counters: tuple[int, ...], cost: float | None
) -> None:
    usage = ModelUsage(*counters, cost_usd=cost)
    expected = dataclasses.asdict(usage)
    if cost is not None:
        expected["cost_usd"] = round(cost, 10)
    assert usage.to_wire() == expected
