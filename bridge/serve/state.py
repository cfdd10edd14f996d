"""What admission checks and control commands see of the serving worker: one small
object (implementing `serve/admission.AdmissionState` and `commands/table.ControlPort`)
so neither ever holds the `Worker` itself."""

from __future__ import annotations

import time
from typing import Any

from dspy_bridge.domain.stats import Stats
from dspy_bridge.io.logs import LogQueue
from dspy_bridge.io.outbox import OutboxBudget
from dspy_bridge.protocol.errors import BridgeError, ErrorType
from dspy_bridge.serve.callbacks import Answer, CallbackTable
from dspy_bridge.serve.engine_loader import EngineLoader
from dspy_bridge.serve.lifecycle import Lifecycle
from dspy_bridge.serve.requests import InFlightTable


class ServingState:
    def __init__(
        self,
        worker_id: str,
        max_in_flight: int,
        max_in_flight_bytes: int,
        in_flight: InFlightTable,
        lifecycle: Lifecycle,
        engine_loader: EngineLoader,
        stats: Stats,
        outbox_budget: OutboxBudget,
        log_queue: LogQueue | None,
        callbacks: CallbackTable,
    ) -> None:
        self.worker_id = worker_id
        self.max_in_flight = max_in_flight
        self.max_in_flight_bytes = max_in_flight_bytes
        self.stats = stats
        self.outbox_budget = outbox_budget
        self.log_queue = log_queue
        self._in_flight = in_flight
        self._lifecycle = lifecycle
        self._engine_loader = engine_loader
        self._callbacks = callbacks
        self._started_at = time.monotonic()

    @property
    def exiting(self) -> bool:
        return self._lifecycle.exiting

    @property
    def shutting_down(self) -> bool:
        return self._lifecycle.shutting_down

    @property
    def work_in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def work_bytes_in_flight(self) -> int:
        return self._in_flight.work_bytes

    @property
    def engine_state(self) -> str:
        return self._engine_loader.state

    @property
    def uptime_s(self) -> float:
        return round(time.monotonic() - self._started_at, 3)

    def engine_error(self) -> BridgeError:
        return self._engine_loader.error()

    def cancel(self, request_id: int | str) -> bool:
        """Stop a request in flight; it answers `cancelled`. False if there is none."""
        return self._in_flight.stop(
            request_id,
            BridgeError(ErrorType.CANCELLED, f"request {request_id!r} was cancelled by the host"),
        )

    def callback_counts(self) -> dict[str, int]:
        return self._callbacks.counts()

    def settle_callback(
        self, callback_id: str, result: Any, error: dict[str, Any] | None
    ) -> str | None:
        return self._callbacks.settle(callback_id, Answer(result, error))

    def begin_shutdown(self, grace_ms: int) -> None:
        self._lifecycle.begin_shutdown(grace_ms)
