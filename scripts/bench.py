"""`make bench`: measured performance, each figure beside a baseline taken in the same run.

- start-up: spawn -> `ready`, spawn -> first `ping` answered, spawn -> DSPy loaded;
- concurrency: N requests that each wait 50 ms (a `sleep`, then a mock LM call with 50 ms
  latency through DSPy's real adapter path), sent all at once, against the baseline of
  sending them one at a time as earlier one-request-at-a-time bridges did;
- round trips: pipelined `ping`s against one-at-a-time `ping`s.

Nothing here asserts: it prints what it measured. Pass --quick for a short run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

from dspy_bridge.tools.client import WorkerClient

MOCK_LATENCY_MS = 50


def timed(action: Callable[[], Any]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def bench_startup(runs: int) -> None:
    ready, first_ping, dspy = [], [], []
    for _ in range(runs):
        started = time.perf_counter()
        with WorkerClient() as worker:
            worker.wait_event("ready")
            ready.append(time.perf_counter() - started)
            worker.call("ping")
            first_ping.append(time.perf_counter() - started)
            # configure_lm builds a dspy.LM, so it waits for DSPy's background import.
            worker.call("configure_lm", {"model": "mock"}, timeout=60)
            dspy.append(time.perf_counter() - started)
    print(f"start-up over {runs} spawns (median, max):")
    for label, samples in (
        ("ready event", ready),
        ("first ping answered", first_ping),
        ("DSPy loaded", dspy),
    ):
        print(
            f"  {label:<22} {statistics.median(samples) * 1000:8.1f} ms"
            f" {max(samples) * 1000:8.1f} ms"
        )


def concurrent_vs_serial(
    worker: WorkerClient,
    label: str,
    command: str,
    make_args: Callable[[int], dict[str, Any]],
    count: int,
    serial_count: int,
) -> None:
    """`make_args(i)` gives each request its own arguments (distinct LM inputs, so DSPy's
    cache cannot answer any of them)."""
    batch = [(command, make_args(i)) for i in range(count)]
    concurrent = timed(lambda: worker.call_many(batch, timeout=120))
    serial = timed(
        lambda: [worker.call(command, make_args(count + i)) for i in range(serial_count)]
    )
    concurrent_rate = count / concurrent
    serial_rate = serial_count / serial
    print(f"{label}:")
    print(
        f"  all at once     {count:5d} requests in {concurrent:7.3f} s = {concurrent_rate:8.1f}/s"
    )
    print(
        f"  one at a time   {serial_count:5d} requests in {serial:7.3f} s = {serial_rate:8.1f}/s"
        "   (baseline)"
    )
    print(f"  speed-up        {concurrent_rate / serial_rate:8.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs and requests")
    options = parser.parse_args()
    scale = 1 if options.quick else 4
    bench_startup(runs=3 * scale)
    with WorkerClient(["--enable-test-commands", "--max-in-flight", "1000"]) as worker:
        worker.wait_event("ready")
        concurrent_vs_serial(
            worker,
            "sleep 50 ms (worker overhead only)",
            "sleep",
            lambda i: {"ms": MOCK_LATENCY_MS},
            count=250 * scale,
            serial_count=10 * scale,
        )
        worker.call(
            "configure_lm",
            {"model": "mock", "extra": {"default": "42", "latency_ms": MOCK_LATENCY_MS}},
            timeout=60,
        )
        program = worker.call("create_program", {"signature": "question -> answer"})
        concurrent_vs_serial(
            worker,
            f"mock LM call with {MOCK_LATENCY_MS} ms latency (DSPy adapter path)",
            "execute_program",
            lambda i: {"program_id": program["program_id"], "inputs": {"question": f"q{i}"}},
            count=250 * scale,
            serial_count=10 * scale,
        )
        concurrent_vs_serial(
            worker,
            "ping round trips",
            "ping",
            lambda i: {},
            count=1000 * scale,
            serial_count=250 * scale,
        )


if __name__ == "__main__":
    main()
