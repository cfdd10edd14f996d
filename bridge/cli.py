"""Start the worker: parse flags, set up logging, run the loop, exit promptly."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from bridge.logs import configure_logging
from bridge.options import WorkerOptions
from bridge.registry import build_table
from bridge.stdio import HostChannel
from bridge.worker import FrameObserver, Worker


def run_worker(
    options: WorkerOptions, argv: list[str], channel: HostChannel, ready: dict[str, Any]
) -> None:
    """Phase two of start-up (after `bridge.startup` announced `ready`): serve until done."""
    configure_logging(options.log_level)
    table = build_table(include_test_only=options.enable_test_commands)
    observers: list[FrameObserver] = []
    if options.record is not None:
        from bridge.record import Recorder, worker_args_without_record

        try:
            recorder = Recorder.open(options.record, worker_args_without_record(argv))
        except OSError as exc:
            print(f"dspy-bridge: cannot record to {options.record}: {exc}", file=sys.stderr)
            sys.stderr.flush()
            os._exit(2)
        observers.append(recorder)
    worker = Worker(options, table, channel, ready, observers=observers)
    code = asyncio.run(worker.run())
    sys.stderr.flush()
    # Threads still running abandoned work (sync DSPy calls) must not delay the exit.
    os._exit(code)
