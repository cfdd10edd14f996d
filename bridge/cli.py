"""Start the worker: parse flags, set up logging, run the loop, exit promptly."""

from __future__ import annotations

import asyncio
import os
import sys

from bridge.logs import configure_logging
from bridge.options import parse_options
from bridge.registry import build_table
from bridge.worker import Worker


def run_worker(argv: list[str], protocol_fds: tuple[int, int]) -> None:
    options = parse_options(argv)
    configure_logging(options.log_level)
    table = build_table(include_test_only=options.enable_test_commands)
    worker = Worker(options, table, protocol_fds)
    code = asyncio.run(worker.run())
    sys.stderr.flush()
    # Threads still running abandoned work (sync DSPy calls) must not delay the exit.
    os._exit(code)
