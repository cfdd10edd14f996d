"""When the worker stops: a graceful drain on `shutdown` or a signal, at once when the
host is gone. The exit is decided once, and from then on the process ends within
EXIT_DEADLINE_S whatever its threads are doing."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from typing import Any

from dspy_bridge.protocol.errors import BridgeError, ErrorType
from dspy_bridge.serve.requests import InFlightTable

EXIT_DEADLINE_S = 0.9


class Lifecycle:
    def __init__(
        self, loop: asyncio.AbstractEventLoop, in_flight: InFlightTable, log: Any
    ) -> None:
        self._loop = loop
        self._in_flight = in_flight
        self._log = log
        self.exit: asyncio.Future[int] = loop.create_future()
        self.shutting_down = False

    @property
    def exiting(self) -> bool:
        return self.exit.done()

    def decide_exit(self, code: int) -> None:
        if self.exit.done():
            return
        self.exit.set_result(code)
        # The orderly path (answer what was read, flush) is normally much faster.
        watchdog = threading.Timer(EXIT_DEADLINE_S, os._exit, (code,))
        watchdog.daemon = True
        watchdog.start()

    def host_gone(self, reason: str) -> None:
        """The host cannot hear us any more: stop at once, abandoning all work."""
        if self.exit.done():
            return
        self.decide_exit(0)
        self._log.info("host_gone", reason=reason, in_flight=len(self._in_flight))
        self._in_flight.cancel_all()

    def begin_shutdown(self, grace_ms: int) -> None:
        if self.shutting_down:
            return
        self.shutting_down = True
        self._log.info("shutdown_started", grace_ms=grace_ms, in_flight=len(self._in_flight))
        self._loop.create_task(self._drain_and_exit(grace_ms))

    def on_signal(self, signum: int, grace_ms: int) -> None:
        self._log.info("signal", signal=signal.Signals(signum).name)
        self.begin_shutdown(grace_ms)

    async def _drain_and_exit(self, grace_ms: int) -> None:
        pending = self._in_flight.work_tasks()
        if pending:
            await asyncio.wait(pending, timeout=grace_ms / 1000)
        leftovers = self._in_flight.work_tasks()
        for request_id in list(self._in_flight.ids_of(leftovers)):
            # Each answers shutting_down; its reply goes out before the exit.
            self._in_flight.stop(
                request_id,
                BridgeError(
                    ErrorType.SHUTTING_DOWN,
                    f"abandoned: the worker shut down after a grace of {grace_ms} ms",
                ),
            )
        if not self.exit.done():
            self._log.info("shutdown_complete")
            self.decide_exit(0)
