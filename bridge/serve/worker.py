"""The worker: reads frames, runs each request as its own asyncio task, writes replies.

One reader thread and one writer thread own the protocol descriptors; everything else
happens on the event loop, so handlers run concurrently and the loop never blocks on
the host. Every request gets exactly one response, whatever happens to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
import traceback
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

import structlog

from dspy_bridge.admission import refusal, unknown_command
from dspy_bridge.commands.table import CommandSpec, CommandTable, RequestContext
from dspy_bridge.domain.redaction import book, scrub
from dspy_bridge.domain.sessions import SessionStore
from dspy_bridge.engine_loader import EngineLoader
from dspy_bridge.io.channel import HostChannel
from dspy_bridge.io.outbox import OutboxBudget
from dspy_bridge.io.pipes import HostPipes
from dspy_bridge.logs import LogQueue
from dspy_bridge.options import WorkerOptions
from dspy_bridge.protocol.codec import MAX_DEPTH, EncodeError, limit_problem
from dspy_bridge.protocol.connection import Connection, Rejected
from dspy_bridge.protocol.envelope import (
    Request,
    error_response,
    event,
    ok_response,
    validate,
)
from dspy_bridge.protocol.errors import BridgeError, ErrorType
from dspy_bridge.protocol.framing import HEADER_SIZE
from dspy_bridge.serve.sweeper import IdleSweeper
from dspy_bridge.stats import Stats

ENGINE_MODULE = "dspy_bridge.engine"
EXIT_DEADLINE_S = 0.9
ABANDON_REPLY_S = 0.5


class FrameObserver(Protocol):
    """Sees every request frame in and every message out (used by --record)."""

    def incoming(self, message: dict[str, Any]) -> None: ...

    def outgoing(self, message: dict[str, Any]) -> None: ...


@dataclass(slots=True)
class InFlight:
    command: str
    control: bool
    started: float
    task: asyncio.Task[None] | None = None
    # Set when the worker stops the task on purpose; it then answers with this error.
    abandon_error: BridgeError | None = None


class Worker:
    def __init__(
        self,
        options: WorkerOptions,
        table: CommandTable,
        channel: HostChannel,
        ready: dict[str, Any],
        observers: list[FrameObserver] | None = None,
        log_queue: LogQueue | None = None,
        held_signals: list[int] | None = None,
    ) -> None:
        self.options = options
        self.table = table
        self.stats = Stats()
        self.sessions = SessionStore(options.session_limits())
        self.worker_id: str = ready["worker_id"]
        self._ready = ready
        self.started_at = time.monotonic()
        self.in_flight: dict[int | str, InFlight] = {}
        self.shutting_down = False
        self._connection = Connection(options.max_frame_bytes, options.max_frame_items)
        self.outbox_budget = OutboxBudget(options.max_outbox_bytes)
        self._pipes = HostPipes(channel, self._connection, self.outbox_budget)
        self._observers = observers or []
        self.log_queue = log_queue
        # Signals that arrived before the loop could handle them (bridge.startup holds them).
        self._held_signals = held_signals if held_signals is not None else []
        self._log = structlog.get_logger("bridge")
        self.engine_loader = EngineLoader(ENGINE_MODULE, self._engine_loaded, self._engine_failed)
        self._loop: asyncio.AbstractEventLoop
        self._exit: asyncio.Future[int]

    # ----- lifecycle -----

    async def run(self) -> int:
        """Serve until shutdown or until the host is gone; returns the exit code."""
        self._loop = asyncio.get_running_loop()
        self._exit = self._loop.create_future()
        self._observe("outgoing", self._ready)  # `ready` itself went out in bridge.startup
        reader, writer = self._pipes.start(self._loop, self._on_items, self._on_eof, self.host_gone)
        self.engine_loader.start(self._loop)
        if self.options.session_idle_ttl_s is not None:
            IdleSweeper(self.sessions, self.options.session_idle_ttl_s, self.emit_event).start(
                self._loop
            )
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(signum, self._on_signal, signum)
        for held in list(self._held_signals):
            self._on_signal(held)
        self._log.info("worker_started", worker_id=self.worker_id, pid=os.getpid())
        code = await self._exit
        # Every frame read gets its one reply: read no more, answer what was read (it gets
        # `shutting_down` now), let replies still in flight out, then flush and stop.
        # Threads are awaited through futures, never `to_thread`: the default executor may
        # be full of threads blocked in DSPy calls.
        self._pipes.stop_reading()
        await reader
        await asyncio.sleep(0)  # run the reader's last scheduled _on_items callbacks
        replying = [entry.task for entry in self.in_flight.values() if entry.task is not None]
        if replying:
            await asyncio.wait(replying, timeout=ABANDON_REPLY_S)
        self._pipes.finish_writing()
        await writer
        return code

    def _decide_exit(self, code: int) -> None:
        """The exit is decided: whatever threads are doing, the process ends within
        EXIT_DEADLINE_S (the orderly path above is normally much faster)."""
        if self._exit.done():
            return
        self._exit.set_result(code)
        watchdog = threading.Timer(EXIT_DEADLINE_S, os._exit, (code,))
        watchdog.daemon = True
        watchdog.start()

    def host_gone(self, reason: str) -> None:
        """The host cannot hear us any more: stop at once, abandoning all work."""
        if self._exit.done():
            return
        self._decide_exit(0)
        self._log.info("host_gone", reason=reason, in_flight=len(self.in_flight))
        for entry in self.in_flight.values():
            if entry.task is not None:
                entry.task.cancel()

    def begin_shutdown(self, grace_ms: int) -> None:
        if self.shutting_down:
            return
        self.shutting_down = True
        self._log.info("shutdown_started", grace_ms=grace_ms, in_flight=len(self.in_flight))
        self._loop.create_task(self._drain_and_exit(grace_ms))

    async def _drain_and_exit(self, grace_ms: int) -> None:
        pending = self._work_tasks()
        if pending:
            await asyncio.wait(pending, timeout=grace_ms / 1000)
        leftovers = self._work_tasks()
        for entry in self.in_flight.values():
            if entry.task in leftovers:
                entry.abandon_error = BridgeError(
                    ErrorType.SHUTTING_DOWN,
                    f"abandoned: the worker shut down after a grace of {grace_ms} ms",
                )
                entry.task.cancel()  # its reply goes out before the exit: see run()
        if not self._exit.done():
            self._log.info("shutdown_complete")
            self._decide_exit(0)

    def _work_tasks(self) -> set[asyncio.Task[None]]:
        return {
            entry.task
            for entry in self.in_flight.values()
            if entry.task is not None and not entry.control and not entry.task.done()
        }

    def _on_signal(self, signum: int) -> None:
        self._log.info("signal", signal=signal.Signals(signum).name)
        self.begin_shutdown(self.options.default_grace_ms)

    # ----- DSPy, loaded in the background so `ready` comes at once -----

    def _engine_loaded(self, module: ModuleType) -> None:
        module.ENGINE.start(self.options.cache_limits())

    def _engine_failed(self, error: BridgeError) -> None:
        self._log.error("engine_load_failed", error=error.message)
        self.emit_event("engine_failed", error=error.to_wire())

    @property
    def engine_state(self) -> str:
        return self.engine_loader.state

    async def engine(self) -> ModuleType:
        """The DSPy integration module, once its import has finished."""
        return await self.engine_loader.get()

    # ----- I/O threads -----

    def _on_eof(self, partial_frame: bool) -> None:
        if partial_frame:
            self._log.warning("eof_inside_frame")
        self.host_gone("stdin closed")

    # ----- outgoing -----

    def emit_event(self, name: str, **fields: Any) -> None:
        self._send(event(name, **fields))

    def _send(self, message: dict[str, Any]) -> None:
        try:
            frame = self._connection.encode(message)
            problem = self._outgoing_problem(message, frame)
        except EncodeError as exc:
            problem = ("encoding", f"could not be encoded: {exc}")
        if problem is not None:
            if "event" in message:
                self._log.error("event_not_sent", event=message["event"], problem=problem[1])
                return
            message = error_response(message["id"], _unsendable(problem))
            frame = self._connection.encode(message)
        self._observe("outgoing", message)
        self._pipes.send(frame)

    def _outgoing_problem(self, message: dict[str, Any], frame: bytes) -> tuple[str, str] | None:
        """The worker holds its replies to the limits it enforces on what it reads."""
        if len(frame) - HEADER_SIZE > self.options.max_reply_bytes:
            return "max_reply_bytes", f"would take {len(frame) - HEADER_SIZE} bytes"
        return limit_problem(message, MAX_DEPTH, self.options.max_frame_items)

    def _observe(self, direction: str, message: dict[str, Any]) -> None:
        """Show a message to the observers; one that raises never costs a reply."""
        for observer in self._observers:
            try:
                getattr(observer, direction)(message)
            except Exception as exc:  # noqa: BLE001 - an observer's bug is logged, not fatal
                self.stats.observer_failures += 1
                self._log.error(
                    "observer_failed", observer=type(observer).__name__, error=repr(exc)[:500]
                )

    def _reply_error(
        self, request_id: int | str | None, command: str, error: BridgeError, received: float
    ) -> None:
        """Refuse a frame or request before any command ran for it."""
        self.stats.record_rejected(error.type.value)
        self._send(error_response(request_id, error))
        self._log_request(
            request_id, command, (time.perf_counter() - received) * 1000, error.type.value,
            message=error.message,
        )

    def _log_request(
        self, request_id: int | str | None, command: str, duration_ms: float, outcome: str,
        **fields: Any,
    ) -> None:
        """The one log line of each request, written after its reply went out; a logging
        failure is counted, never allowed to cost the reply."""
        try:
            self._log.info(
                "request", id=request_id, command=command, duration_ms=round(duration_ms, 3),
                outcome=outcome, **fields,
            )
        except Exception:  # noqa: BLE001 - see the docstring
            self.stats.log_failures += 1

    # ----- incoming -----

    def _on_items(self, items: list[Request | Rejected], received: float) -> None:
        try:
            self._handle_items(items, received)
        finally:
            self._pipes.items_handled()

    def _handle_items(self, items: list[Request | Rejected], received: float) -> None:
        for item in items:
            try:
                self._on_item(item, received)
            except Exception:  # noqa: BLE001 - a bug here must still answer the frame
                request_id = item.request_id if isinstance(item, Rejected) else item.id
                if request_id is not None and request_id in self.in_flight:
                    continue  # it was admitted: its task answers it
                with contextlib.suppress(Exception):  # the reply matters more than the line
                    self._log.exception("frame_handling_failed", id=request_id)
                self._send(
                    error_response(
                        request_id,
                        BridgeError(ErrorType.INTERNAL, "the worker failed to handle this frame"),
                    )
                )

    def _on_item(self, item: Request | Rejected, received: float) -> None:
        if isinstance(item, Rejected):
            if isinstance(item.value, dict):
                self._observe("incoming", item.value)
            command = item.value.get("command") if isinstance(item.value, dict) else None
            self._reply_error(
                item.request_id,
                command if isinstance(command, str) else "",
                item.error,
                received,
            )
        else:
            self._observe("incoming", item.model_dump(exclude_none=True))
            self._dispatch(item, received)

    def _dispatch(self, request: Request, received: float) -> None:
        spec = self.table.get(request.command)
        error = (
            unknown_command(request, self.table.names())
            if spec is None
            else refusal(request, spec, self)
        )
        if error is not None:
            self._reply_error(request.id, request.command, error, received)
            return
        assert spec is not None
        try:
            args = validate(
                spec.args_model, request.args, context=f"invalid arguments for {request.command}: "
            )
        except BridgeError as invalid:
            self._reply_error(request.id, request.command, invalid, received)
            return
        entry = InFlight(request.command, spec.control, started=received)
        self.in_flight[request.id] = entry
        self.stats.observe_in_flight(self.work_in_flight)
        entry.task = self._loop.create_task(self._serve(request, spec, args, entry))

    @property
    def work_in_flight(self) -> int:
        return sum(1 for entry in self.in_flight.values() if not entry.control)

    # ----- what admission reads (bridge.admission.AdmissionState) -----

    @property
    def exiting(self) -> bool:
        return self._exit.done()

    @property
    def max_in_flight(self) -> int:
        return self.options.max_in_flight

    def is_in_flight(self, request_id: int | str) -> bool:
        return request_id in self.in_flight

    def engine_error(self) -> BridgeError:
        return self.engine_loader.error()

    async def _serve(
        self, request: Request, spec: CommandSpec[Any], args: Any, entry: InFlight
    ) -> None:
        context = RequestContext(
            request.id, self.options, self.sessions, self.engine, self.emit_event, self
        )
        deadline = asyncio.timeout(request.timeout_ms / 1000 if request.timeout_ms else None)
        error: BridgeError | None = None
        result: Any = None
        try:
            async with deadline:
                result = await spec.handler(context, args)
        except asyncio.CancelledError:
            if entry.abandon_error is None:
                del self.in_flight[request.id]
                raise  # the host is gone: nobody to answer
            error = entry.abandon_error
        except TimeoutError:
            if deadline.expired():
                error = BridgeError(
                    ErrorType.TIMEOUT,
                    f"{request.command} did not finish within {request.timeout_ms} ms",
                    details={"timeout_ms": request.timeout_ms},
                )
            else:
                error = _internal(self._log, request)
        except BridgeError as exc:
            error = exc
        except Exception:  # noqa: BLE001 - any bug becomes an `internal` reply, never a crash
            error = _internal(self._log, request)
        del self.in_flight[request.id]
        duration_ms = (time.perf_counter() - entry.started) * 1000
        self.stats.record(request.command, duration_ms, error.type.value if error else None)
        if error is None:
            self._send(ok_response(request.id, result))
        else:
            self._send(error_response(request.id, error))
        self._log_request(
            request.id, request.command, duration_ms, error.type.value if error else "ok"
        )

    def cancel(self, request_id: int | str) -> bool:
        """Stop a request in flight; it answers `cancelled`. False if there is none."""
        entry = self.in_flight.get(request_id)
        if entry is None or entry.task is None or entry.task.done() or entry.abandon_error:
            return False
        entry.abandon_error = BridgeError(
            ErrorType.CANCELLED, f"request {request_id!r} was cancelled by the host"
        )
        entry.task.cancel()
        return True

    @property
    def uptime_s(self) -> float:
        return round(time.monotonic() - self.started_at, 3)


def _unsendable(problem: tuple[str, str]) -> BridgeError:
    limit, sentence = problem
    if limit in {"max_reply_bytes", "max_frame_items", "max_depth"}:
        return BridgeError(
            ErrorType.LIMIT_EXCEEDED,
            f"the reply {sentence}, beyond the protocol's limit ({limit})",
            retryable=False,
            details={"limit": limit},
        )
    return BridgeError(ErrorType.INTERNAL, f"the reply {sentence}")


def _internal(log: Any, request: Request) -> BridgeError:
    with contextlib.suppress(Exception):  # the reply matters more than its log line
        log.exception("handler_failed", id=request.id, command=request.command)
    return BridgeError(
        ErrorType.INTERNAL,
        f"{request.command} failed inside the worker",
        traceback=scrub(traceback.format_exc(), book.held()),
    )
