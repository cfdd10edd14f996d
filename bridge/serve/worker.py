"""The worker: reads frames, runs each request as its own asyncio task (a control command
at once), writes replies.

The loop reads the protocol descriptor itself and a writer thread takes over a backlog of
replies (`bridge/io`); everything happens on the event loop, so handlers run
concurrently and the loop never blocks on the host. A frame's path: decoded by the
`Connection` (on the loop, a chunk at a time) →
`_on_item` → admission (`serve/admission`) → argument validation → its own task
(`serve/request`) → one reply (`serve/outbound`). Every request gets exactly one response.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
from types import ModuleType
from typing import Any

import structlog

from dspy_bridge.commands.registry import LoadingTable
from dspy_bridge.commands.table import CommandSpec, RequestContext
from dspy_bridge.domain.sessions import SessionStore
from dspy_bridge.domain.stats import Stats
from dspy_bridge.io.channel import HostChannel
from dspy_bridge.io.logs import LogQueue, RequestLines
from dspy_bridge.io.outbox import OutboxBudget
from dspy_bridge.io.pipes import HostPipes
from dspy_bridge.options import WorkerOptions
from dspy_bridge.protocol.connection import Connection, Rejected
from dspy_bridge.protocol.envelope import Request, error_response
from dspy_bridge.protocol.errors import BridgeError, ErrorType
from dspy_bridge.serve.admission import refusal, unknown_command
from dspy_bridge.serve.callbacks import CallbackTable, RequestCallbacks
from dspy_bridge.serve.engine_loader import EngineLoader
from dspy_bridge.serve.lifecycle import Lifecycle
from dspy_bridge.serve.outbound import FrameObserver, Outbound
from dspy_bridge.serve.priority import LoopPriority
from dspy_bridge.serve.request import RequestRunner
from dspy_bridge.serve.requests import InFlight, InFlightTable
from dspy_bridge.serve.state import ServingState
from dspy_bridge.serve.sweeper import IdleSweeper

ENGINE_MODULE = "dspy_bridge.engine"
ABANDON_REPLY_S = 0.5


class Worker:
    def __init__(
        self,
        options: WorkerOptions,
        table: LoadingTable,
        channel: HostChannel,
        ready: dict[str, Any],
        observers: list[FrameObserver],
        log_queue: LogQueue,
        held_signals: list[int],
        priority: LoopPriority,
    ) -> None:
        self.options = options
        self.table = table
        self.stats = Stats()
        self.sessions = SessionStore(options.session_limits())
        self.worker_id: str = ready["worker_id"]
        self._ready = ready
        self.in_flight = InFlightTable()
        self.outbox_budget = OutboxBudget(options.max_outbox_bytes)
        self.log_queue = log_queue
        connection = Connection(
            options.max_frame_bytes, options.max_frame_items, options.max_reply_bytes
        )
        self._pipes = HostPipes(channel, connection, self.outbox_budget)
        self._log = structlog.get_logger("bridge")
        self.outbound = Outbound(
            connection, self._pipes, observers, self.stats, self._log,
            RequestLines(log_queue, options.log_level, self.worker_id),
        )
        self.callbacks = CallbackTable(self.outbound.emit_event, options.callback_timeout_ms)
        self._no_args: dict[str, Any] = {}
        self._runner = RequestRunner(self.in_flight, self.outbound, self.stats, self._log)
        # Signals that arrived before the loop could handle them (bridge/startup held them).
        self._held_signals = held_signals
        # The command modules load with DSPy, in its thread, before it (a first request
        # for one of them need not import it on the loop).
        self.engine_loader = EngineLoader(
            ENGINE_MODULE, self._engine_loaded, self._engine_failed,
            give_way=priority.imports_give_way, before=table.load_all,
        )
        self._loop: asyncio.AbstractEventLoop
        self._lifecycle: Lifecycle
        self._state: ServingState

    async def run(self) -> int:
        """Serve until shutdown or until the host is gone; returns the exit code."""
        self._loop = asyncio.get_running_loop()
        self._lifecycle = Lifecycle(self._loop, self.in_flight, self._log)
        self._state = ServingState(
            self.worker_id, self.options.max_in_flight, self.options.max_in_flight_bytes,
            self.in_flight, self._lifecycle,
            self.engine_loader, self.stats, self.outbox_budget, self.log_queue, self.callbacks,
        )
        self.outbound.observe("outgoing", self._ready)  # `ready` went out in bridge/startup
        reader, writer = self._pipes.start(
            self._loop, self._on_items, self._on_eof, self._lifecycle.host_gone
        )
        self.engine_loader.start(self._loop)
        if self.options.session_idle_ttl_s is not None:
            sweeper = IdleSweeper(
                self.sessions, self.options.session_idle_ttl_s, self.outbound.emit_event
            )
            sweeper.start(self._loop)
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(signum, self._on_signal, signum)
        for held in list(self._held_signals):
            self._on_signal(held)
        self._log.info("worker_started", worker_id=self.worker_id, pid=os.getpid())
        code = await self._lifecycle.exit
        # Every frame read gets its one reply: read no more, answer what was read (it gets
        # `shutting_down` now), let replies still in flight out, then flush and stop.
        # Threads are awaited through futures, never `to_thread`: the default executor may
        # be full of threads blocked in DSPy calls.
        self._pipes.stop_reading()
        await reader
        await asyncio.sleep(0)  # run a reading thread's last scheduled hand-over
        replying = self.in_flight.tasks()
        if replying:
            await asyncio.wait(replying, timeout=ABANDON_REPLY_S)
        self._pipes.finish_writing()
        await writer
        return code

    def _on_signal(self, signum: int) -> None:
        self._lifecycle.on_signal(signum, self.options.default_grace_ms)

    def _on_eof(self, partial_frame: bool) -> None:
        if partial_frame:
            self._log.warning("eof_inside_frame")
        self._lifecycle.host_gone("stdin closed")

    # ----- DSPy, loaded in the background so `ready` comes at once -----

    def _engine_loaded(self, module: ModuleType) -> None:
        module.ENGINE.start(self.options.cache_limits(), self.options.modules)
        # DSPy's and litellm's modules are hundreds of thousands of long-lived objects:
        # out of the collector's sight, every collection stops rescanning them.
        gc.freeze()

    def _engine_failed(self, error: BridgeError) -> None:
        self._log.error("engine_load_failed", error=error.message)
        self.outbound.emit_event("engine_failed", error=error.to_wire())

    async def engine(self) -> ModuleType:
        """The DSPy integration module, once its import has finished."""
        return await self.engine_loader.get()

    # ----- incoming -----

    def _on_items(self, items: list[Request | Rejected], received: float) -> None:
        for item in items:
            self._on_item_guarded(item, received)

    def _on_item_guarded(self, item: Request | Rejected, received: float) -> None:
        try:
            self._on_item(item, received)
        except Exception:  # noqa: BLE001 - a bug here must still answer the frame
            request_id = item.request_id if isinstance(item, Rejected) else item.id
            if request_id is not None and request_id in self.in_flight:
                return  # it was admitted: its task answers it
            with contextlib.suppress(Exception):  # the reply matters more than the line
                self._log.exception("frame_handling_failed", id=request_id)
            self.outbound.reply(
                error_response(
                    request_id,
                    BridgeError(ErrorType.INTERNAL, "the worker failed to handle this frame"),
                )
            )

    def _on_item(self, item: Request | Rejected, received: float) -> None:
        if isinstance(item, Rejected):
            if isinstance(item.value, dict):
                self.outbound.observe("incoming", item.value)
            command = item.value.get("command") if isinstance(item.value, dict) else None
            self.outbound.refuse(
                item.request_id, command if isinstance(command, str) else "", item.error, received
            )
            return
        if self.outbound.observing:
            self.outbound.observe("incoming", item.to_wire())
        spec = self.table.get(item.command)
        if spec is None:
            self.outbound.refuse(
                item.id, item.command, unknown_command(item, self.table.names()), received
            )
            return
        try:
            error = refusal(item, spec, self._state)
            args = None if error else self._arguments(spec, item)
        except BridgeError as invalid:
            error = invalid
        if error is not None:
            self.outbound.refuse(item.id, item.command, error, received)
            return
        calls = self._callbacks_for(item, args) if spec.needs_engine else None
        context = RequestContext(
            item.id, self.options, self.sessions, self.engine, self.outbound.emit_event,
            self._state, calls,
        )
        if spec.control:
            self._runner.run_at_once(item, spec, args, context, received)
            return
        entry = InFlight(item.command, started=received, frame_bytes=item.frame_bytes)
        self.in_flight.add(item.id, entry)
        self.stats.observe_in_flight(len(self.in_flight))
        entry.task = self._loop.create_task(
            self._runner.run(item, spec, args, context, entry, calls)
        )

    def _callbacks_for(self, request: Request, args: Any) -> RequestCallbacks:
        """The request's way to the host functions its session declares."""
        session_id = SessionStore.resolve_id(getattr(args, "session_id", None))
        sessions = self.sessions.sessions

        def lookup(name: str) -> Any:
            session = sessions.get(session_id)
            return None if session is None else session.tools.get(name)

        return RequestCallbacks(self.callbacks, self._loop, request.id, session_id, lookup,
                                request.timeout_ms)

    def _arguments(self, spec: CommandSpec[Any], request: Request) -> Any:
        """The request's arguments, validated. Argument models are frozen, so the one
        instance for "no arguments" is validated once per command and shared."""
        if not request.args and spec.name in self._no_args:
            return self._no_args[spec.name]
        args = spec.args_model.read(request.args, f"invalid arguments for {request.command}: ")
        if not request.args:
            self._no_args[spec.name] = args
        return args
