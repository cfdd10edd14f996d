"""Console entry point: `dspy-bridge` and `python -m dspy_bridge`."""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["replay"]:
        from dspy_bridge.tools.replay_cli import main as replay_main

        sys.exit(replay_main(args[1:]))
    from dspy_bridge.io.channel import claim_protocol_fds

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
    from dspy_bridge.main import run_worker

    run_worker(options, args, channel, ready, record_to, held.received)
