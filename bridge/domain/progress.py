"""Progress of long-running work (evaluate_program, compile_program): scores counted as
they come, from any thread, and reported at most every PROGRESS_EVERY_S however fast
they come."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

PROGRESS_EVERY_S = 0.25

# report(done, total, score): the mean score so far, or the final score
Report = Callable[[int, int, float | None], None]


class ProgressCounter:
    """`total` is exact (the last item reports at once) or an estimate (`estimated`:
    raised whenever the work outgrows it, and `finish` reports the end)."""

    def __init__(self, total: int, report: Report, *, estimated: bool = False) -> None:
        self.total = total
        self.done = 0
        self.score_sum = 0.0
        self._report = report
        self._estimated = estimated
        self._lock = threading.Lock()
        self._last = 0.0

    @property
    def mean(self) -> float:
        return self.score_sum / self.done if self.done else 0.0

    def tick(self, score: float) -> None:
        with self._lock:
            self.done += 1
            self.score_sum += score
            self.total = max(self.total, self.done)
            now = time.monotonic()
            last = not self._estimated and self.done == self.total
            if not last and now - self._last < PROGRESS_EVERY_S:
                return
            self._last = now
            done, total, mean = self.done, self.total, self.mean
        self._report(done, total, round(mean, 6))

    def finish(self, score: float | None) -> None:
        with self._lock:
            self.total = self.done = max(self.done, 1)
        self._report(self.done, self.total, score)
