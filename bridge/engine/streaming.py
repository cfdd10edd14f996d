"""execute_program with `stream: true`: DSPy's `streamify` with a listener on each of
the program's output fields; each chunk and status message goes to the request's sink
as it comes, and the final prediction is the call's result as usual."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dspy
from dspy.streaming import StatusMessage, StreamListener, StreamResponse

from dspy_bridge.engine.programs import ProgramHandle

# (event name, its fields): `stream` {field, chunk, last} or `stream_status` {message}
StreamSink = Callable[[str, dict[str, Any]], None]


def listeners(program: ProgramHandle) -> list[StreamListener]:
    """One listener per output field the program's own predictors write (a field that
    two predictors both write, such as ReAct's, is listened to in the last: the one that
    answers)."""
    found: dict[str, Any] = {}
    for _, predictor in program.module.named_predictors():
        for name in predictor.signature.output_fields:
            if name in program.output_names:
                found[name] = predictor
    return [StreamListener(signature_field_name=name, predict=predictor)
            for name, predictor in found.items()]


async def streamed(program: ProgramHandle, kwargs: dict[str, Any], sink: StreamSink) -> Any:
    run = dspy.streamify(program.module, stream_listeners=listeners(program),
                         is_async_program=hasattr(program.module, "aforward"))
    prediction = None
    async for item in run(**kwargs):
        if isinstance(item, StreamResponse):
            sink("stream", {"field": item.signature_field_name, "chunk": item.chunk,
                            "last": item.is_last_chunk})
        elif isinstance(item, StatusMessage):
            sink("stream_status", {"message": item.message})
        elif isinstance(item, dspy.Prediction):
            prediction = item
    return prediction
