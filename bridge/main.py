"""Start the worker: parse flags, set up logging, run the loop, exit promptly."""

from __future__ import annotations

import asyncio
import os
from typing import Any, TextIO

from dspy_bridge.commands.registry import build_table
from dspy_bridge.io.channel import HostChannel
from dspy_bridge.io.logs import LogQueue, configure_logging, route_std_streams
from dspy_bridge.options import WorkerOptions
from dspy_bridge.serve.outbound import FrameObserver
from dspy_bridge.serve.worker import Worker

# The last log lines get this long to reach stderr (a stderr nobody drains gets no more;
# the exit's one-second deadline, armed when it was decided, bounds it anyway).
EXIT_LOG_DRAIN_S = 0.5


def run_worker(
    options: WorkerOptions,
    argv: list[str],
    channel: HostChannel,
    ready: dict[str, Any],
    record_to: TextIO | None,
    held_signals: list[int],
) -> None:
    """Phase two of start-up (after `bridge.startup` announced `ready`): serve until done."""
    log_queue = LogQueue(options.max_log_queue)
    route_std_streams(log_queue)
    configure_logging(options.log_level, log_queue)
    table = build_table(include_test_only=options.enable_test_commands)
    observers: list[FrameObserver] = []
    if record_to is not None:
        from dspy_bridge.tools.record import Recorder, worker_args_without_record

        observers.append(Recorder.on_stream(record_to, worker_args_without_record(argv)))
    worker = Worker(
        options,
        table,
        channel,
        ready,
        observers=observers,
        log_queue=log_queue,
        held_signals=held_signals,
    )
    # Not asyncio.run: at the end it would wait for the default executor's threads, and
    # threads still running abandoned work (sync DSPy calls) must not delay the exit.
    loop = asyncio.new_event_loop()
    code = loop.run_until_complete(worker.run())
    log_queue.drain(timeout=EXIT_LOG_DRAIN_S)
    os._exit(code)
