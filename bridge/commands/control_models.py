"""The control commands' arguments as pydantic models, each named as the dataclass it
stands behind in `commands.control`: they decide any `args` map that is not plainly
valid and word its errors. Imported only then (or by the engine's background load)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from dspy_bridge.domain.models import Args


class NoArgs(Args):
    pass


class CancelArgs(Args):
    request_id: Annotated[int, Field(ge=0)] | str


class ShutdownArgs(Args):
    grace_ms: Annotated[int, Field(ge=0)] | None = None
