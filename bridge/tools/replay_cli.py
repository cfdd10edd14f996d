"""`dspy-bridge replay FILE...`: play transcripts against fresh workers, report diffs.

The command line over `bridge.tools.replay`: one PASS/FAIL line per file (with the diff
of each failure), then the counts; exit status 0 when every file passed.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from dspy_bridge.tools.client import default_worker_command
from dspy_bridge.tools.replay import DEFAULT_TIMEOUT_S, replay_file


def _join_worker_args(argv: Sequence[str]) -> list[str]:
    """`--worker-arg X` takes X literally, even when X starts with dashes; so does every
    token after a `--` (`replay a.jsonl -- --log-level debug`)."""
    out: list[str] = []
    items = iter(argv)
    for item in items:
        if item == "--":
            out += [f"--worker-arg={rest}" for rest in items]
        elif item == "--worker-arg":
            value = next(items, None)
            out.append(item if value is None else f"--worker-arg={value}")
        else:
            out.append(item)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dspy-bridge replay",
        description="Replay transcripts (JSON Lines of send/expect/expect_event) against "
        "fresh workers; print a pass/fail line per file and a diff of each failure.",
    )
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE")
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
        help=f"seconds to wait for each expectation (default {DEFAULT_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--worker-arg", action="append", default=[], metavar="ARG",
        help="a flag for every worker, one token per use "
        "(e.g. --worker-arg --enable-test-commands); repeatable. Every token after a "
        "lone `--` is a worker flag too",
    )
    parser.add_argument(
        "--worker-command", default=None, metavar="CMD",
        help="the worker to spawn, as a shell-quoted command "
        f"(default: {shlex.join(default_worker_command())})",
    )
    parser.add_argument(
        "--strict", action="store_true",
        help="also fail when a response arrives that no expect consumed",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true",
        help="print every frame sent (>) and received (<) as it happens",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    options = build_parser().parse_args(_join_worker_args(sys.argv[1:] if argv is None else argv))
    if options.timeout <= 0:
        print("dspy-bridge replay: --timeout must be positive", file=sys.stderr)
        return 2
    command = shlex.split(options.worker_command) if options.worker_command else None
    failed = 0
    for path in options.files:
        result = replay_file(
            path,
            timeout=options.timeout,
            worker_args=options.worker_arg,
            worker_command=command,
            strict=options.strict,
            trace=(lambda text: print(text, flush=True)) if options.verbose else None,
        )
        print(result.report() if not result.passed else result.summary(), flush=True)
        failed += not result.passed
    total = len(options.files)
    print(f"{total - failed} passed, {failed} failed", flush=True)
    return 1 if failed else 0
