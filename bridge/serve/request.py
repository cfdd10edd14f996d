"""One request's session: its own task runs the handler under the request's deadline and
ends with exactly one reply and then one log line, whatever happens to it. A control
command's handler runs at once instead, ending the same way."""

from __future__ import annotations

import asyncio
import contextlib
import time
import traceback
from typing import Any

from dspy_bridge.commands.table import CommandSpec, RequestContext
from dspy_bridge.domain.host import HostCallFailed
from dspy_bridge.domain.redaction import book, scrub
from dspy_bridge.domain.sessions import SessionStore
from dspy_bridge.domain.stats import Stats
from dspy_bridge.io.logs import bind_request, unbind_request
from dspy_bridge.protocol.envelope import Request, error_response, ok_response
from dspy_bridge.protocol.errors import BridgeError, ErrorType
from dspy_bridge.serve.callbacks import RequestCallbacks
from dspy_bridge.serve.outbound import Outbound
from dspy_bridge.serve.requests import InFlight, InFlightTable

# What a callback's abandonment says, by the error that ended its request.
ABANDON_REASONS = {
    ErrorType.TIMEOUT: "timeout",
    ErrorType.CANCELLED: "cancelled",
    ErrorType.SHUTTING_DOWN: "shutting_down",
}


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
        calls: RequestCallbacks | None = None,
    ) -> None:
        entry.began = True
        session = SessionStore.resolve_id(args.session_id) if hasattr(args, "session_id") else None
        bind_request(request.id, request.command, session)
        deadline = asyncio.timeout(request.timeout_ms / 1000) if request.timeout_ms else None
        error: BridgeError | None = None
        result: Any = None
        try:
            if entry.abandon_error is not None:  # stopped before it began (see InFlight)
                raise asyncio.CancelledError
            if deadline is None:
                result = await spec.handler(context, args)
            else:
                async with deadline:
                    result = await spec.handler(context, args)
        except asyncio.CancelledError:
            if entry.abandon_error is None:
                if calls is not None:
                    calls.close("request_ended")
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
        except HostCallFailed as failure:  # a host function the work needed failed
            error = failure.to_error()
        except Exception:  # noqa: BLE001 - any bug becomes an `internal` reply, never a crash
            error = self._internal(request)
        if calls is not None:  # the host hears of abandoned callbacks before the reply
            calls.close(ABANDON_REASONS.get(error.type, "request_ended") if error else
                        "request_ended")
        self._in_flight.remove(request.id)
        self._answer(request, entry.started, result, error, session)

    def run_at_once(
        self, request: Request, spec: CommandSpec[Any], args: Any, context: RequestContext,
        started: float,
    ) -> None:
        """A control command: its handler never waits, so it runs and is answered now,
        named in the lines it logs until it returns."""
        error: BridgeError | None = None
        result: Any = None
        bound = bind_request(request.id, request.command, None)
        try:
            result = spec.handler(context, args)
        except BridgeError as exc:
            error = exc
        except Exception:  # noqa: BLE001 - any bug becomes an `internal` reply, never a crash
            error = self._internal(request)
        finally:
            unbind_request(bound)
        self._answer(request, started, result, error)

    def _answer(
        self, request: Request, started: float, result: Any, error: BridgeError | None,
        session_id: str | None = None,
    ) -> None:
        duration_ms = (time.perf_counter() - started) * 1000
        outcome = "ok" if error is None else error.type.value
        self._stats.record(request.command, duration_ms, None if error is None else outcome)
        if error is None:
            self._outbound.reply(ok_response(request.id, result))
        else:
            self._outbound.reply(error_response(request.id, error))
        self._outbound.log_request(
            request.id, request.command, duration_ms, outcome, session_id=session_id
        )

    def _internal(self, request: Request) -> BridgeError:
        with contextlib.suppress(Exception):  # the reply matters more than its log line
            self._log.exception("handler_failed", id=request.id, command=request.command)
        return BridgeError(
            ErrorType.INTERNAL,
            f"{request.command} failed inside the worker",
            traceback=scrub(traceback.format_exc(), book.held()),
        )
