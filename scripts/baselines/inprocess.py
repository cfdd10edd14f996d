"""The in-process runner: the bench's execute programs called in this process on stock
DSPy, timed here and printed as one JSON object on stdout.

  inprocess.py sync ROUNDS COUNT          one call at a time: seconds per call, per round
  inprocess.py async LATENCY_MS ROUNDS TOTAL WINDOW [TOTAL WINDOW ...]
                                          TOTAL `program.acall`s under `dspy.context(lm=...)`,
                                          WINDOW at once by asyncio, the LM answering after
                                          LATENCY_MS: seconds per round, per (TOTAL, WINDOW)
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import dspy
from dspy_program import disable_cache, make_lm, make_program


def sync_rounds(rounds: int, count: int) -> list[list[float]]:
    program, lm = make_program(), make_lm()
    out = []
    with dspy.context(lm=lm):
        program(question="warm-up")
        for round_index in range(rounds):
            samples = []
            for i in range(count):
                started = time.perf_counter()
                program(question=f"q{round_index}-{i}")
                samples.append(time.perf_counter() - started)
            out.append(samples)
    return out


async def _async_round(program: dspy.Module, lm: Any, total: int, window: int, tag: str) -> float:
    gate = asyncio.Semaphore(window)

    async def one(i: int) -> None:
        async with gate:
            with dspy.context(lm=lm):
                await program.acall(question=f"{tag}-{i}")

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(total)))
    return time.perf_counter() - started


async def async_rounds(latency_ms: int, rounds: int, *specs: int) -> list[list[float]]:
    program, lm = make_program(), make_lm(latency_ms=latency_ms)
    await _async_round(program, lm, 10, 10, "warm-up")
    pairs = list(zip(specs[::2], specs[1::2], strict=True))
    return [
        [await _async_round(program, lm, total, window, f"{window}-{r}") for r in range(rounds)]
        for total, window in pairs
    ]


def main() -> None:
    disable_cache()
    mode, *numbers = sys.argv[1:]
    values = [int(n) for n in numbers]
    if mode == "sync":
        result: Any = sync_rounds(*values)
    else:
        result = asyncio.run(async_rounds(*values))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
