"""Counters the worker reports through `get_stats`."""

from __future__ import annotations

import os
import statistics
from collections import Counter, defaultdict, deque

LATENCY_WINDOW = 1024


class Stats:
    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.max_in_flight = 0
        self.observer_failures = 0
        self.log_failures = 0
        self._latencies: defaultdict[str, deque[float]] = defaultdict(
            lambda: deque(maxlen=LATENCY_WINDOW)
        )

    def observe_in_flight(self, in_flight: int) -> None:
        self.max_in_flight = max(self.max_in_flight, in_flight)

    def record(self, command: str, duration_ms: float, error_type: str | None) -> None:
        self.requests[command] += 1
        self._latencies[command].append(duration_ms)
        if error_type is not None:
            self.errors[error_type] += 1

    def record_rejected(self, error_type: str) -> None:
        """A frame or request refused before any command ran."""
        self.errors[error_type] += 1

    def latency_summary(self) -> dict[str, dict[str, float]]:
        summary = {}
        for command, window in self._latencies.items():
            ordered = sorted(window)
            # Inclusive: percentiles stay within the samples (never above max_ms).
            quantiles = (
                statistics.quantiles(ordered, n=100, method="inclusive")
                if len(ordered) > 1
                else ordered * 99
            )
            summary[command] = {
                "count": len(ordered),
                "mean_ms": round(statistics.fmean(ordered), 3),
                "p50_ms": round(quantiles[49], 3),
                "p95_ms": round(quantiles[94], 3),
                "p99_ms": round(quantiles[98], 3),
                "max_ms": round(ordered[-1], 3),
            }
        return summary


def rss_bytes() -> int:
    """Current resident set size (not the peak), from /proc where there is one."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
