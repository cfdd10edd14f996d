"""Console entry point: `dspy-bridge` and `python -m bridge`."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["replay"]:
        from bridge.replay import main as replay_main

        sys.exit(replay_main(args[1:]))
    from bridge.stdio import claim_protocol_fds

    fds = claim_protocol_fds()
    from bridge.cli import run_worker

    run_worker(args, fds)
