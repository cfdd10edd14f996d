"""The bench's outputs: bench/results.md (machine, versions, date, every figure beside
its baseline and target) and the PNG plots; a full run also refreshes the marked table
in docs/benchmarks.md so the docs never carry hand-copied numbers."""

from __future__ import annotations

import os
import platform
import re
import statistics
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

DOCS_BEGIN = "<!-- BEGIN bench-results (written by scripts/bench.py) -->"
DOCS_END = "<!-- END bench-results -->"
HEADLINE_BEGIN = "<!-- BEGIN bench-headline (written by scripts/bench.py) -->"
HEADLINE_END = "<!-- END bench-headline -->"
PLOTS = {
    "latency.png": "Latency distributions",
    "throughput.png": "Throughput against requests in flight",
    "payload.png": "Payload round trip",
    "pool.png": "Pool scaling",
    "rss.png": "RSS over executes",
}


@dataclass
class Row:
    figure: str
    measured: str
    baseline: str
    ratio: float | None
    target: str
    met: bool | None


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    # name -> per round, the samples (seconds)
    latencies: dict[str, list[list[float]]] = field(default_factory=dict)
    startup: dict[str, list[float]] = field(default_factory=dict)
    # system -> in flight -> requests per second
    sweep: dict[str, dict[int, float]] = field(default_factory=dict)
    # system -> bytes -> (p50, p99) seconds
    payload: dict[str, dict[int, tuple[float, float]]] = field(default_factory=dict)
    pool: dict[int, float] = field(default_factory=dict)
    pool_cores: dict[int, float] = field(default_factory=dict)  # busy with bench + workers
    pool_other_cores: dict[int, float] = field(default_factory=dict)  # with anything else
    rss: list[tuple[int, int]] = field(default_factory=list)  # (executes so far, bytes)
    quick: bool = False
    plan: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    load_average: str = ""  # /proc/loadavg's 1/5/15-minute figures when the run began


def cpu_model() -> str:
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def size_text(size: int) -> str:
    return f"{size // 1_000_000} MB" if size >= 1_000_000 else f"{size // 1000} KB"


def ms_text(seconds: float) -> str:
    return f"{seconds * 1000:.3g} ms"


def status(row: Row) -> str:
    return "-" if row.met is None else "**met**" if row.met else "**missed**"


def body(results: Results, images: str) -> str:
    """Everything but the title; image links start with `images`."""
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    mode = "quick (`--quick`)" if results.quick else "full"
    lines = [
        "| | |", "| --- | --- |",
        f"| date | {now} |",
        f"| machine | {os.cpu_count()} x {cpu_model()}, {platform.system()} "
        f"{platform.release()} |",
        f"| versions | Python {platform.python_version()}, dspy {metadata.version('dspy')}, "
        f"msgpack {metadata.version('msgpack')} |",
        f"| run | {mode}, {results.plan['rounds']} rounds, {results.seconds:.0f} s; load "
        f"average {results.load_average} before it |",
        "",
        "Each figure and its baseline were measured in this run, rounds alternating; a "
        "latency is the median of the rounds' p50s and the p99 of all samples, a "
        "throughput the median of the rounds.",
        "",
        "| figure | measured | baseline (same run) | ratio | target | |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in results.rows:
        ratio = "-" if row.ratio is None else f"{row.ratio:.2f}x"
        lines.append(f"| {row.figure} | {row.measured} | {row.baseline or '-'} | {ratio} "
                     f"| {row.target} | {status(row)} |")
    systems = list(results.sweep)
    lines += [
        "", "### Throughput against requests in flight (100 ms mock latency, requests/s)", "",
        "| in flight | " + " | ".join(systems) + " |",
        "| --- |" + " --- |" * len(systems),
    ]
    for level in next(iter(results.sweep.values())):
        lines.append(f"| {level} | " + " | ".join(
            f"{results.sweep[name][level]:,.1f}" for name in systems) + " |")
    worker, echo = results.payload["worker"], results.payload["echo floor"]
    lines += [
        "", "### Payload round trip (`echo` of a bin value, one at a time)", "",
        "| size | worker p50 | worker p99 | echo floor p50 | echo floor p99 | p50 ratio |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for size, (p50, p99) in worker.items():
        lines.append(f"| {size_text(size)} | {ms_text(p50)} | {ms_text(p99)} "
                     f"| {ms_text(echo[size][0])} | {ms_text(echo[size][1])} "
                     f"| {p50 / echo[size][0]:.2f}x |")
    one = results.pool[1]
    lines += ["", "### Pool scaling (500 in flight on each worker, 100 ms mock latency)", "",
              "| workers | requests/s | x one worker | cores busy: bench + workers "
              "| cores busy: other processes |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {size} | {value:,.0f} | {value / one:.2f}x "
              f"| {results.pool_cores[size]:.2f} | {max(results.pool_other_cores[size], 0):.2f} |"
              for size, value in results.pool.items()]
    lines += ["", "### Start-up (spawn →)", "", "| | p50 | max |", "| --- | --- | --- |"]
    lines += [f"| {name} | {ms_text(statistics.median(values))} | {ms_text(max(values))} |"
              for name, values in results.startup.items()]
    lines += [""] + [f"![{title}]({images}{name})" for name, title in PLOTS.items()]
    return "\n".join(lines) + "\n"


def plot(results: Results, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    panels = [("ping, one at a time", ["ping, worker", "ping, echo floor"]),
              ("execute_program, one at a time",
               ["execute, worker", "execute, in-process DummyLM"]),
              ("ping during DSPy's load", ["pings while DSPy loads", "pings after DSPy loaded"])]
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for axis, (title, names) in zip(axes, panels, strict=True):
        for name in names:
            samples = sorted(s * 1000 for rounds in results.latencies.get(name, [])
                             for s in rounds)
            if samples:
                axis.plot(samples, [(i + 1) / len(samples) for i in range(len(samples))],
                          label=name)
        axis.set(title=title, xscale="log", xlabel="latency (ms, log)",
                 ylabel="fraction of requests")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    save(figure, out / "latency.png")

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for name, rates in results.sweep.items():
        axis.plot(list(rates), list(rates.values()), marker="o", label=name)
    axis.set(title="Throughput against requests in flight (100 ms mock LM)", xscale="log",
             yscale="log", xlabel="requests in flight", ylabel="requests / s")
    axis.grid(alpha=0.3, which="both")
    axis.legend()
    save(figure, out / "throughput.png")

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for name, points in results.payload.items():
        axis.plot(list(points), [p50 * 1000 for p50, _ in points.values()], marker="o",
                  label=f"{name} p50")
    axis.set(title="Payload round trip (echo, one at a time)", xscale="log", yscale="log",
             xlabel="payload (bytes)", ylabel="round trip (ms)")
    axis.grid(alpha=0.3, which="both")
    axis.legend()
    save(figure, out / "payload.png")

    figure, axis = plt.subplots(figsize=(7, 4.5))
    sizes = list(results.pool)
    axis.plot(sizes, list(results.pool.values()), marker="o", label="measured")
    axis.plot(sizes, [results.pool[1] * size for size in sizes], linestyle="--",
              label="linear (x one worker)")
    axis.set(title=f"Pool scaling ({os.cpu_count()} cores, 500 in flight per worker)",
             xlabel="workers", ylabel="requests / s", xticks=sizes)
    axis.grid(alpha=0.3)
    axis.legend()
    save(figure, out / "pool.png")

    figure, axis = plt.subplots(figsize=(7, 4.5))
    axis.plot([n for n, _ in results.rss], [rss / 2**20 for _, rss in results.rss], marker=".")
    axis.set(title="Worker RSS over executes (cache off)", xlabel="executes",
             ylabel="RSS (MB)")
    axis.grid(alpha=0.3)
    save(figure, out / "rss.png")


def save(figure: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def headline(results: Results) -> str:
    """One line per target: the ratio (or figure) measured, and whether it is met."""
    now = datetime.now(UTC).strftime("%Y-%m-%d")
    lines = [f"From the last full `make bench` ({now}, {os.cpu_count()} cores), each against "
             "its baseline in the same run:", ""]
    for row in results.rows:
        relative = row.ratio is not None and "x" in row.target  # else the target is absolute
        measured = f"{row.ratio:.2f}x" if relative else row.measured
        lines.append(f"- {row.figure}: {measured} (target {row.target}: "
                     f"{status(row).strip('*')})")
    return "\n".join(lines) + "\n"


def replace_block(path: Path, begin: str, end: str, text: str) -> None:
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    path.write_text(pattern.sub(lambda _: f"{begin}\n{text}{end}", path.read_text()))


def write_outputs(results: Results, out: Path, docs: Path | None, readme: Path | None) -> str:
    """Write results.md and the plots (and the table in `docs`, the headline in `readme`,
    if given); returns the summary."""
    out.mkdir(parents=True, exist_ok=True)
    plot(results, out)
    text = "# Benchmark results\n\nWritten by `make bench` (`scripts/bench.py`).\n\n"
    (out / "results.md").write_text(text + body(results, ""))
    if docs is not None and docs.exists():
        images = os.path.relpath(out, docs.parent) + "/"
        replace_block(docs, DOCS_BEGIN, DOCS_END, body(results, images))
    if readme is not None and readme.exists():
        replace_block(readme, HEADLINE_BEGIN, HEADLINE_END, headline(results))
    summary = [f"{row.figure}: {row.measured} | {row.baseline or '-'} | "
               f"{'' if row.ratio is None else f'{row.ratio:.2f}x '}{row.target}: "
               f"{status(row).strip('*')}" for row in results.rows]
    return "\n".join([*summary, f"wrote {out / 'results.md'} and {len(PLOTS)} plots"])
