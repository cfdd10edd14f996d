"""Test-only commands, enabled by --enable-test-commands (never by default)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Annotated, Any

from pydantic import Field

from dspy_bridge.commands.control import NoArgs
from dspy_bridge.commands.table import CommandTable, RequestContext
from dspy_bridge.domain.models import Args

table = CommandTable()


class SleepArgs(Args):
    ms: Annotated[int, Field(ge=0, le=3_600_000)]
    # Block a thread of the default executor instead, as a synchronous DSPy call does.
    in_thread: bool = False


class EchoArgs(Args):
    value: Any = None


class StdoutNoiseArgs(Args):
    # No NUL: the text is also a child process's argument.
    text: Annotated[str, Field(max_length=10_000, pattern=r"^[^\x00]*$")] = "stray output\n"


@table.command("sleep", SleepArgs)
async def sleep(ctx: RequestContext, args: SleepArgs) -> dict[str, Any]:
    if args.in_thread:
        await asyncio.to_thread(time.sleep, args.ms / 1000)
    else:
        await asyncio.sleep(args.ms / 1000)
    return {"slept_ms": args.ms}


@table.command("echo", EchoArgs)
async def echo(ctx: RequestContext, args: EchoArgs) -> Any:
    return args.value


@table.command("fail", NoArgs)
async def fail(ctx: RequestContext, args: NoArgs) -> Any:
    raise RuntimeError("deliberate failure from the fail test command")


@table.command("stdout_noise", StdoutNoiseArgs)
async def stdout_noise(ctx: RequestContext, args: StdoutNoiseArgs) -> dict[str, Any]:
    """Writes to fd 1 three ways (print, os.write, a child process) to prove frames survive."""
    print(args.text, end="")
    os.write(1, args.text.encode())
    process = await asyncio.create_subprocess_exec("echo", args.text.strip())
    await process.wait()
    return {"written": 3}
