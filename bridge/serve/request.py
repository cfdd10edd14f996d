"""One request's session: its own task runs the handler under the request's deadline and
ends with exactly one reply and then one log line, whatever happens to it."""

from __future__ import annotations

import asyncio
import contextlib
import time
import traceback
from typing import Any

from dspy_bridge.commands.table import CommandSpec, RequestContext
from dspy_bridge.domain.redaction import book, scrub
from dspy_bridge.domain.sessions import SessionStore
from dspy_bridge.domain.stats import Stats
from dspy_bridge.io.logs import bind_request
from dspy_bridge.protocol.envelope import Request, error_response, ok_response
from dspy_bridge.protocol.errors import BridgeError, ErrorType
from dspy_bridge.serve.outbound import Outbound
from dspy_bridge.serve.requests import InFlight, InFlightTable


class RequestRunner:
    def __init__(
        self, in_flight: InFlightTable, outbound: Outbound, stats: Stats, log: Any
    ) -> None:
        self._in_flight = in_flight
        self._outbound = outbound
        self._stats = stats
        self._log = log

    async def run(
        self,
        request: Request,
        spec: CommandSpec[Any],
        args: Any,
        context: RequestContext,
        entry: InFlight,
    ) -> None:
        session = SessionStore.resolve_id(args.session_id) if hasattr(args, "session_id") else None
        bind_request(request.id, request.command, session)
        deadline = asyncio.timeout(request.timeout_ms / 1000) if request.timeout_ms else None
        error: BridgeError | None = None
        result: Any = None
        try:
            if deadline is None:
                result = await spec.handler(context, args)
            else:
                async with deadline:
                    result = await spec.handler(context, args)
        except asyncio.CancelledError:
            if entry.abandon_error is None:
                self._in_flight.remove(request.id)
                raise  # the host is gone: nobody to answer
            error = entry.abandon_error
        except TimeoutError:
            if deadline is not None and deadline.expired():
                error = BridgeError(
                    ErrorType.TIMEOUT,
                    f"{request.command} did not finish within {request.timeout_ms} ms",
                    details={"timeout_ms": request.timeout_ms},
                )
            else:
                error = self._internal(request)
        except BridgeError as exc:
            error = exc
        except Exception:  # noqa: BLE001 - any bug becomes an `internal` reply, never a crash
            error = self._internal(request)
        self._in_flight.remove(request.id)
        duration_ms = (time.perf_counter() - entry.started) * 1000
        outcome = "ok" if error is None else error.type.value
        self._stats.record(request.command, duration_ms, None if error is None else outcome)
        if error is None:
            self._outbound.reply(ok_response(request.id, result))
        else:
            self._outbound.reply(error_response(request.id, error))
        self._outbound.log_request(request.id, request.command, duration_ms, outcome)

    def _internal(self, request: Request) -> BridgeError:
        with contextlib.suppress(Exception):  # the reply matters more than its log line
            self._log.exception("handler_failed", id=request.id, command=request.command)
        return BridgeError(
            ErrorType.INTERNAL,
            f"{request.command} failed inside the worker",
            traceback=scrub(traceback.format_exc(), book.held()),
        )
