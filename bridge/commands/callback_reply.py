"""`callback_reply`: the host's answer to a callback the worker issued (PROTOCOL.md,
host callbacks). A control command, answered when read; in a module of its own because
its argument model, with a validator across fields, is pydantic's to decide, and the
other control commands are answered before pydantic is imported (`commands.control`)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, model_validator

from dspy_bridge.commands.table import CommandTable, RequestContext
from dspy_bridge.domain.models import Args
from dspy_bridge.protocol.errors import BridgeError, ErrorType

table = CommandTable()


class HostErrorAnswer(Args):
    message: Annotated[str, Field(max_length=8192)]
    type: Annotated[str, Field(min_length=1, max_length=100)] = "host_error"
    retryable: bool = False


class CallbackReplyArgs(Args):
    callback_id: Annotated[str, Field(min_length=1, max_length=100)]
    result: Any = None
    error: HostErrorAnswer | None = None

    @model_validator(mode="after")
    def _one_answer(self) -> CallbackReplyArgs:
        if ("result" in self.model_fields_set) == (self.error is not None):
            raise ValueError("give exactly one of result and error")
        return self


@table.control("callback_reply", CallbackReplyArgs)
def callback_reply(ctx: RequestContext, args: CallbackReplyArgs) -> dict[str, Any]:
    error = None if args.error is None else args.error.model_dump()
    outcome = ctx.control.settle_callback(args.callback_id, args.result, error)
    if outcome is None:
        raise BridgeError(ErrorType.NOT_FOUND,
                          f"this worker never issued callback {args.callback_id[:100]!r}",
                          details={"callback_id": args.callback_id})
    return {"accepted": True} if outcome == "accepted" else {"accepted": False,
                                                             "reason": outcome}
