"""LM and cache configuration: `configure_lm`, `configure_cache`."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from dspy_bridge.commands.common import engine_of
from dspy_bridge.commands.table import CommandTable, RequestContext
from dspy_bridge.domain.lm import LmConfig, check_lm
from dspy_bridge.domain.models import Args, SessionId

table = CommandTable(needs_engine=True)


class ConfigureLmArgs(LmConfig):
    session_id: SessionId | None = None


@table.command("configure_lm", ConfigureLmArgs)
async def configure_lm(ctx: RequestContext, args: ConfigureLmArgs) -> dict[str, Any]:
    config = LmConfig.model_validate(args.model_dump(exclude={"session_id"}, exclude_none=True))
    checked = check_lm(config, allowed_env=ctx.options.api_key_env_allow)
    engine = await engine_of(ctx)
    lm = await engine.lm(checked)
    store = ctx.sessions
    session = None if args.session_id is None else store.get_or_create(args.session_id)
    store.set_lm(session, lm)
    scope = "worker" if session is None else "session"
    return {"scope": scope, "session_id": args.session_id, "lm": checked.public()}


class ConfigureCacheArgs(Args):
    # The cache is worker-wide (its keys are partitioned by session); a session_id is
    # accepted like on every DSPy command and changes nothing.
    session_id: SessionId | None = None
    enable_memory: bool | None = None
    enable_disk: bool | None = None
    disk_dir: Annotated[str, Field(min_length=1, max_length=4096)] | None = None
    memory_max_entries: Annotated[int, Field(gt=0)] | None = None
    memory_max_bytes: Annotated[int, Field(gt=0)] | None = None
    disk_size_limit_bytes: Annotated[int, Field(gt=0)] | None = None


@table.command("configure_cache", ConfigureCacheArgs)
async def configure_cache(ctx: RequestContext, args: ConfigureCacheArgs) -> dict[str, Any]:
    engine = await engine_of(ctx)
    return engine.configure_cache(**args.model_dump(exclude_none=True, exclude={"session_id"}))
