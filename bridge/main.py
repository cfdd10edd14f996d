"""The composition root: `dspy-bridge` and `python -m dspy_bridge` start here, and the
whole stack is built in this one place, in two phases.

Phase one imports almost nothing (`startup`, `options`, `io/channel`): it claims the
protocol descriptors, validates the flags and announces `ready`. Phase two, after
`ready`, imports pydantic, structlog and asyncio and builds, bottom up: log queue →
logging → command table (its handlers' modules load when first needed) → observers →
`Worker` (which composes the pipes, the `Connection`, outbound, admission and the
request sessions) → event loop, whose selector marks it busy. DSPy loads after that, in
the background, giving way to the loop whenever it is busy (`serve/priority`). The
phase-two imports are inside `_serve` for that reason.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, TextIO

from dspy_bridge.io.channel import HostChannel, claim_protocol_fds

if TYPE_CHECKING:
    from dspy_bridge.options import WorkerOptions

# The last log lines get this long to reach stderr (a stderr nobody drains gets no more;
# the exit's one-second deadline, armed when it was decided, bounds it anyway).
EXIT_LOG_DRAIN_S = 0.5


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["replay"]:
        from dspy_bridge.tools.replay_cli import main as replay_main

        sys.exit(replay_main(args[1:]))
    if {"-h", "--help", "--version"} & set(args):
        from dspy_bridge.options import parse_options

        parse_options(args)  # prints to stdout and exits: no protocol is spoken
    # Before any other import, so nothing an import prints can reach the host's pipe.
    channel = claim_protocol_fds()
    from dspy_bridge.options import parse_options
    from dspy_bridge.startup import HeldSignals, announce, open_record_file

    options = parse_options(args)
    record_to = open_record_file(options.record)
    held = HeldSignals().hold()
    ready = announce(options, channel.protocol_out)
    # pydantic would scan every installed distribution for plugins at its first model;
    # the worker uses none, and the scan delays serving the first request.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    _serve(options, args, channel, ready, record_to, held.received)


def _serve(
    options: WorkerOptions,
    argv: list[str],
    channel: HostChannel,
    ready: dict[str, Any],
    record_to: TextIO | None,
    held_signals: list[int],
) -> None:
    """Phase two: build the stack and serve until done; the process ends here."""
    import asyncio

    from dspy_bridge.commands.registry import LoadingTable
    from dspy_bridge.io.logs import LogQueue, configure_logging, route_std_streams
    from dspy_bridge.serve.outbound import FrameObserver
    from dspy_bridge.serve.priority import LoopPriority
    from dspy_bridge.serve.worker import Worker

    log_queue = LogQueue(options.max_log_queue)
    route_std_streams()
    configure_logging(options.log_level, log_queue, ready["worker_id"])
    table = LoadingTable(include_test_only=options.enable_test_commands)
    observers: list[FrameObserver] = []
    if record_to is not None:
        from dspy_bridge.tools.record import Recorder, worker_args_without_record

        observers.append(Recorder.on_stream(record_to, worker_args_without_record(argv)))
    priority = LoopPriority()
    worker = Worker(
        options, table, channel, ready, observers, log_queue, held_signals, priority
    )
    # Not asyncio.run: at the end it would wait for the default executor's threads, and
    # threads still running abandoned work (sync DSPy calls) must not delay the exit.
    loop = asyncio.SelectorEventLoop(priority.selector(options.busy_wait_us / 1e6))
    code = loop.run_until_complete(worker.run())
    log_queue.drain(timeout=EXIT_LOG_DRAIN_S)
    os._exit(code)
