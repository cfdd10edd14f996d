"""`make bench`: every figure of the worker beside its baseline, measured in the same run.

The baselines (scripts/baselines/): the echo floor (the least a process can do to answer
a frame), the one-at-a-time worker (as earlier DSPy bridges served) and the in-process
runner (the same DSPy program called in the caller's own process). Every process is
driven by the same raw driver (scripts/bench_driver.py). Rounds alternate figure and
baseline, so drift in the machine's load hits both alike.

Writes bench/results.md and bench/*.png; a full run also refreshes the table in
docs/benchmarks.md. Nothing here asserts: it prints and writes what it measured.
Pass --quick for a run under a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_driver import Load, Peer, PeerFailed, drive, machine_busy_seconds, own_cpu_seconds
from bench_report import Results, Row, write_outputs

ROOT = Path(__file__).resolve().parent.parent
BASELINES = ROOT / "scripts" / "baselines"
SIGNATURE = "question -> answer"
ANSWER = "42"
SLOW_MS = 100  # the mock LM latency of the concurrency figures
LEVELS = (1, 10, 100, 500)  # requests in flight
POOL_SIZES = (1, 2, 4)
PAYLOAD_SIZES = (1_000, 100_000, 1_000_000, 10_000_000)
# The worker's in-flight limit (256 by default) must not refuse the 500-in-flight figures.
WORKER_ARGV = [sys.executable, "-P", "-m", "dspy_bridge", "--max-in-flight", "1000",
               "--enable-test-commands"]
# The same worker sleeping as soon as it is idle (the default polls 50 µs first).
SLEEPING_FLAGS = ["--busy-wait-us", "0"]
ECHO_ARGV = [sys.executable, str(BASELINES / "echo_floor.py")]
SEQUENTIAL_ARGV = [sys.executable, str(BASELINES / "sequential_worker.py")]


@dataclass(frozen=True)
class Plan:
    rounds: int
    startup_rounds: int
    pings: int  # one at a time, per round
    burst: int  # sent at once
    executes: int  # one at a time, per round
    sweep_multiple: int  # requests per in-flight level: this many times the level...
    sweep_min: int  # ...and at least this many
    sequential_cap: int  # requests per level for the one-at-a-time worker
    payload_counts: tuple[int, ...]  # round trips per payload size
    rss_batches: int
    rss_batch: int
    pool_requests: int  # per worker, 500 in flight


FULL = Plan(rounds=5, startup_rounds=10, pings=2000, burst=4000, executes=500,
            sweep_multiple=2, sweep_min=20, sequential_cap=10,
            payload_counts=(300, 100, 30, 6), rss_batches=20, rss_batch=500,
            pool_requests=1000)
QUICK = Plan(rounds=2, startup_rounds=3, pings=300, burst=4000, executes=100,
             sweep_multiple=1, sweep_min=10, sequential_cap=5,
             payload_counts=(50, 20, 6, 2), rss_batches=8, rss_batch=250,
             pool_requests=500)


@dataclass
class Bench:
    plan: Plan
    results: Results = field(default_factory=Results)
    _inputs: int = 0

    def question(self) -> str:
        """A question no earlier call asked, so no cache could answer it."""
        self._inputs += 1
        return f"q{self._inputs}"

    def executes(self, count: int, session: str = "default") -> list[tuple[str, dict[str, Any]]]:
        return [("execute_program", {"session_id": session, "program_id": "qa",
                                     "inputs": {"question": self.question()}})
                for _ in range(count)]


def median(values: list[float]) -> float:
    return statistics.median(values)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.3g} ms" if seconds >= 0.001 else f"{seconds * 1e6:.3g} µs"


def latency_text(per_round: list[list[float]]) -> str:
    """p50 (median of the rounds' p50s) and p99 of all samples."""
    pooled = [s for samples in per_round for s in samples]
    p50 = median([percentile(samples, 50) for samples in per_round])
    return f"p50 {ms(p50)}, p99 {ms(percentile(pooled, 99))}"


def p50_of_rounds(per_round: list[list[float]]) -> float:
    return median([percentile(samples, 50) for samples in per_round])


def rate(count: int, seconds: float) -> float:
    return count / seconds


# ----- processes -----


def wait_loaded(peer: Peer) -> None:
    """Every workload but start-up runs only after DSPy has loaded in the worker."""
    deadline = time.perf_counter() + 120
    while peer.call("ping")["engine"] == "loading":
        if time.perf_counter() > deadline:
            raise PeerFailed(f"DSPy did not load in {peer.name}")
        time.sleep(0.05)


def set_up_programs(peer: Peer) -> None:
    """Session `default`: the mock LM answering at once; session `slow`: after SLOW_MS.
    The response cache is off, so every call runs DSPy (and each asks a new question)."""
    for session, latency_ms in (("default", 0), ("slow", SLOW_MS)):
        peer.call("configure_lm", {"session_id": session, "model": "mock", "cache": False,
                                   "extra": {"default": ANSWER, "latency_ms": latency_ms}})
        peer.call("create_program", {"session_id": session, "program_id": "qa",
                                     "signature": SIGNATURE, "program_type": "predict"})
    peer.call("configure_cache", {"enable_memory": False, "enable_disk": False})
    answer = peer.call("execute_program", {"session_id": "default", "program_id": "qa",
                                           "inputs": {"question": "warm-up"}})
    if answer["outputs"]["answer"] != ANSWER:
        raise PeerFailed(f"{peer.name} ran the program wrong: {answer}")


def inprocess(*args: int | str) -> Any:
    """Run the in-process runner; it times itself and prints JSON as its last line."""
    done = subprocess.run([sys.executable, str(BASELINES / "inprocess.py"), *map(str, args)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----- figures -----


def startup(bench: Bench) -> list[Row]:
    """Spawn -> `ready` and -> first ping reply (the ping is written at spawn, before
    `ready`), then one-at-a-time pings while DSPy loads in the background and after."""
    ready, first, echo_first = [], [], []
    during: list[list[float]] = []
    after: list[list[float]] = []
    for _ in range(bench.plan.startup_rounds):
        echo = Peer("echo floor", ECHO_ARGV)
        ping = Load(echo, [("ping", {})])
        drive([ping])
        echo_first.append(ping.finished - echo.spawned_at)
        echo.close()

        worker = Peer("worker", WORKER_ARGV)
        ping = Load(worker, [("ping", {})])
        drive([ping])
        first.append(ping.finished - worker.spawned_at)
        ready.append(worker.wait_event("ready") - worker.spawned_at)
        loading: list[float] = []
        while True:
            batch = Load(worker, [("ping", {})] * 20, keep_results=True)
            drive([batch])
            loading += [latency for latency, result in zip(batch.latencies, batch.results,
                                                           strict=True)
                        if result["engine"] == "loading"]
            if batch.results[-1]["engine"] != "loading":
                break
        wait_loaded(worker)
        settled = Load(worker, [("ping", {})] * max(len(loading), 200))
        drive([settled])
        if loading:
            during.append(loading)
            after.append(settled.latencies)
        worker.close()
    results = bench.results
    results.latencies["pings while DSPy loads"] = during
    results.latencies["pings after DSPy loaded"] = after
    first_p50, echo_p50 = median(first), median(echo_first)
    results.startup = {"ready": ready, "first ping reply": first, "echo first reply": echo_first}
    rows = [Row(
        "spawn → first reply (ping written at spawn)",
        f"p50 {ms(first_p50)}, max {ms(max(first))} (`ready` p50 {ms(median(ready))})",
        f"echo floor p50 {ms(echo_p50)}", first_p50 / echo_p50,
        "≤ 150 ms", first_p50 <= 0.150)]
    if during:
        ratio = p50_of_rounds(during) / p50_of_rounds(after)
        rows.append(Row(
            "ping while DSPy loads in the background",
            f"{latency_text(during)} ({sum(map(len, during))} pings)",
            f"after it loaded: {latency_text(after)}", ratio, "≤ 2x after", ratio <= 2))
    else:
        rows.append(Row("ping while DSPy loads in the background", "DSPy loaded before any",
                        "", None, "≤ 2x after", None))
    return rows


def pings(bench: Bench, worker: Peer, sleeping: Peer, echo: Peer) -> list[Row]:
    peers = (worker, sleeping, echo)
    one: dict[str, list[list[float]]] = {peer.name: [] for peer in peers}
    burst_rates: dict[str, list[float]] = {"worker": [], "echo floor": []}
    burst_cpu: dict[str, list[float]] = {"worker": [], "echo floor": []}
    plan = bench.plan
    for _ in range(plan.rounds):
        for peer in peers:
            load = Load(peer, [("ping", {})] * plan.pings)
            drive([load])
            one[peer.name].append(load.latencies)
        for peer in (worker, echo):
            cpu_before = peer.cpu_seconds()
            load = Load(peer, [("ping", {})] * plan.burst, window=plan.burst)
            drive([load])
            burst_rates[peer.name].append(rate(plan.burst, load.seconds))
            burst_cpu[peer.name].append((peer.cpu_seconds() - cpu_before) / plan.burst)
    bench.results.latencies["ping, worker"] = one["worker"]
    bench.results.latencies["ping, echo floor"] = one["echo floor"]
    floor = p50_of_rounds(one["echo floor"])
    ratios = {name: p50_of_rounds(rounds) / floor for name, rounds in one.items()}
    rates = {name: median(values) for name, values in burst_rates.items()}
    cpu = {name: median(values) for name, values in burst_cpu.items()}
    burst_ratio = rates["worker"] / rates["echo floor"]
    return [
        *(Row(f"ping, one at a time{label}", latency_text(one[name]),
              f"echo floor {latency_text(one['echo floor'])}", ratios[name], "≤ 2x echo",
              ratios[name] <= 2)
          for name, label in (("worker", ""), (sleeping.name, f" ({sleeping.name})"))),
        Row(f"{plan.burst:,} pings sent at once: throughput",
            f"{rates['worker']:,.0f}/s, CPU {ms(cpu['worker'])}/request",
            f"echo floor {rates['echo floor']:,.0f}/s, CPU {ms(cpu['echo floor'])}/request",
            burst_ratio, "≥ 0.25x echo", burst_ratio >= 0.25),
    ]


def payloads(bench: Bench, worker: Peer, echo: Peer) -> None:
    """`echo {value: <bin of N bytes>}` round trips, one at a time."""
    for size, count in zip(PAYLOAD_SIZES, bench.plan.payload_counts, strict=True):
        value = os.urandom(size)
        per_peer: dict[str, list[float]] = {"worker": [], "echo floor": []}
        for _ in range(bench.plan.rounds):
            for peer in (worker, echo):
                load = Load(peer, [("echo", {"value": value})] * count)
                drive([load])
                per_peer[peer.name] += load.latencies
        for name, samples in per_peer.items():
            bench.results.payload.setdefault(name, {})[size] = (
                percentile(samples, 50), percentile(samples, 99))


def execute_one_at_a_time(bench: Bench, worker: Peer) -> Row:
    plan = bench.plan
    drive([Load(worker, bench.executes(20))])  # warm-up
    rounds: list[list[float]] = []
    in_process: list[list[float]] = []
    for _ in range(plan.rounds):
        load = Load(worker, bench.executes(plan.executes))
        drive([load])
        rounds.append(load.latencies)
        in_process += inprocess("sync", 1, plan.executes)
    bench.results.latencies["execute, worker"] = rounds
    bench.results.latencies["execute, in-process DummyLM"] = in_process
    ratio = p50_of_rounds(rounds) / p50_of_rounds(in_process)
    return Row("execute_program (Predict, mock LM), one at a time", latency_text(rounds),
               f"in-process DummyLM {latency_text(in_process)}", ratio,
               "≤ 1.3x in-process", ratio <= 1.3)


def sweep(bench: Bench, worker: Peer, sequential: Peer) -> Row:
    """Throughput against requests in flight, each answered by the LM after SLOW_MS."""
    plan = bench.plan
    totals = [max(level * plan.sweep_multiple, plan.sweep_min) for level in LEVELS]
    specs = [n for total, level in zip(totals, LEVELS, strict=True) for n in (total, level)]
    names = ("worker", "one-at-a-time worker", "in-process DSPy (acall)")
    rates: dict[str, dict[int, list[float]]] = {name: {n: [] for n in LEVELS} for name in names}
    for _ in range(plan.rounds):
        in_process = inprocess("async", SLOW_MS, 1, *specs)
        for level, total, (seconds,) in zip(LEVELS, totals, in_process, strict=True):
            rates["in-process DSPy (acall)"][level].append(rate(total, seconds))
        for level, total in zip(LEVELS, totals, strict=True):
            load = Load(worker, bench.executes(total, "slow"), window=level)
            drive([load])
            rates["worker"][level].append(rate(total, load.seconds))
            # It serves one request at a time whatever is in flight, so a few show its
            # rate (500 of them would take 50 s a point).
            count = min(total, plan.sequential_cap)
            load = Load(sequential, bench.executes(count, "slow"), window=level)
            drive([load])
            rates["one-at-a-time worker"][level].append(rate(count, load.seconds))
    bench.results.sweep = {name: {level: median(values) for level, values in by_level.items()}
                           for name, by_level in rates.items()}
    ours = bench.results.sweep["worker"][500]
    theirs = bench.results.sweep["in-process DSPy (acall)"][500]
    return Row(f"500 in flight, {SLOW_MS} ms mock latency: throughput",
               f"{ours:,.0f}/s ({totals[-1]} requests)",
               f"in-process `acall` x 500 {theirs:,.0f}/s; one-at-a-time worker "
               f"{bench.results.sweep['one-at-a-time worker'][500]:,.1f}/s",
               ours / theirs, "≥ 1.3x in-process async", ours / theirs >= 1.3)


def memory(bench: Bench, worker: Peer, sequential: Peer) -> list[Row]:
    """Idle RSS once DSPy is loaded, then RSS after each batch of executes (cache off)."""
    time.sleep(0.5)
    idle, reference = worker.rss_bytes(), sequential.rss_bytes()
    drive([Load(worker, bench.executes(100), window=50)])  # warm-up
    samples = [(0, worker.rss_bytes())]
    for batch in range(1, bench.plan.rss_batches + 1):
        drive([Load(worker, bench.executes(bench.plan.rss_batch), window=50)])
        samples.append((batch * bench.plan.rss_batch, worker.rss_bytes()))
    bench.results.rss = samples
    # The trend is judged past the first quarter: arenas, caches and thread pools fill up
    # at first, and only a rise that continues after that is growth.
    judged = samples[len(samples) // 4:]
    slope = fit_slope(judged)
    rise = slope * (judged[-1][0] - judged[0][0])
    mb = 1024 * 1024
    return [
        Row("idle RSS, DSPy loaded", f"{idle / mb:.0f} MB",
            f"one-at-a-time worker (stock DSPy imported) {reference / mb:.0f} MB", None,
            "≤ 100 MB", idle <= 100 * mb),
        Row("RSS over many executes (cache off)",
            f"{samples[0][1] / mb:.0f} → {samples[-1][1] / mb:.0f} MB over "
            f"{samples[-1][0]:,} executes; fitted {slope * 1000 / 1024:+.1f} KB per 1,000 "
            f"after the first quarter ({rise / mb:+.2f} MB)",
            "", None, "no growth trend (fitted rise < 1 MB)", rise < mb),
    ]


def fit_slope(points: list[tuple[int, int]]) -> float:
    """Least-squares slope of y over x."""
    xs, ys = [float(x) for x, _ in points], [float(y) for _, y in points]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread


def pool(bench: Bench) -> Row:
    """N workers driven at once, each with 500 in flight of the same load."""
    workers = [Peer(f"worker {i + 1}", WORKER_ARGV) for i in range(max(POOL_SIZES))]
    try:
        for worker in workers:
            worker.wait_event("ready")
        for worker in workers:
            wait_loaded(worker)
            set_up_programs(worker)
            drive([Load(worker, bench.executes(50, "slow"), window=50)])  # warm-up
        rates: dict[int, list[float]] = {size: [] for size in POOL_SIZES}
        # Cores busy with anything but this bench and its workers: a machine shared with
        # other work cannot give a second worker a core of its own.
        others: dict[int, list[float]] = {size: [] for size in POOL_SIZES}
        used: dict[int, list[float]] = {size: [] for size in POOL_SIZES}  # by bench + pool
        count = bench.plan.pool_requests
        for _ in range(bench.plan.rounds):
            for size in POOL_SIZES:
                loads = [Load(worker, bench.executes(count, "slow"), window=500)
                         for worker in workers[:size]]
                ours = own_cpu_seconds() + sum(w.cpu_seconds() for w in workers)
                busy = machine_busy_seconds()
                drive(loads)
                seconds = max(load.finished for load in loads) - min(
                    load.started for load in loads)
                ours = own_cpu_seconds() + sum(w.cpu_seconds() for w in workers) - ours
                others[size].append((machine_busy_seconds() - busy - ours) / seconds)
                used[size].append(ours / seconds)
                rates[size].append(rate(count * size, seconds))
    finally:
        for worker in workers:
            worker.close()
    bench.results.pool = {size: median(values) for size, values in rates.items()}
    bench.results.pool_other_cores = {size: median(v) for size, v in others.items()}
    bench.results.pool_cores = {size: median(v) for size, v in used.items()}
    ratio = bench.results.pool[2] / bench.results.pool[1]
    other = bench.results.pool_other_cores[2]
    return Row("pool of 2 workers, 500 in flight each: throughput",
               f"{bench.results.pool[2]:,.0f}/s (4 workers: {bench.results.pool[4]:,.0f}/s); "
               f"cores busy: {bench.results.pool_cores[2]:.1f} bench + workers, "
               f"{max(other, 0):.1f} other processes",
               f"one worker {bench.results.pool[1]:,.0f}/s", ratio, "≥ 1.7x one worker",
               ratio >= 1.7)


def run(plan: Plan, quick: bool) -> Results:
    bench = Bench(plan)
    rows: list[Row] = []
    stage("start-up")
    rows += startup(bench)
    worker, echo, sequential = (Peer("worker", WORKER_ARGV), Peer("echo floor", ECHO_ARGV),
                                Peer("one-at-a-time worker", SEQUENTIAL_ARGV))
    sleeping = Peer(" ".join(SLEEPING_FLAGS), [*WORKER_ARGV, *SLEEPING_FLAGS])
    try:
        worker.wait_event("ready")
        sleeping.wait_event("ready")
        wait_loaded(sleeping)
        sequential.wait_event("ready", timeout=120)
        wait_loaded(worker)
        set_up_programs(worker)
        set_up_programs(sequential)
        stage("memory")
        memory_rows = memory(bench, worker, sequential)
        stage("pings")
        rows += pings(bench, worker, sleeping, echo)
        stage("payloads")
        payloads(bench, worker, echo)
        stage("execute, one at a time")
        rows.append(execute_one_at_a_time(bench, worker))
        stage("throughput against in-flight count")
        rows.append(sweep(bench, worker, sequential))
    finally:
        for peer in (worker, sleeping, echo, sequential):
            peer.close()
    stage("pool")
    rows.append(pool(bench))
    bench.results.rows = [*rows, *memory_rows]
    bench.results.quick = quick
    bench.results.plan = plan.__dict__
    return bench.results


def stage(name: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {name}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and requests")
    parser.add_argument("--out", type=Path, default=ROOT / "bench", help="results folder")
    options = parser.parse_args()
    started = time.perf_counter()
    load_average = " / ".join(Path("/proc/loadavg").read_text().split()[:3])
    results = run(QUICK if options.quick else FULL, options.quick)
    results.seconds = time.perf_counter() - started
    results.load_average = load_average
    # Quick figures are for checking the bench itself; only a full run is published.
    docs, readme = (None, None) if options.quick else (ROOT / "docs" / "benchmarks.md",
                                                       ROOT / "README.md")
    print(write_outputs(results, options.out, docs, readme))


if __name__ == "__main__":
    main()
