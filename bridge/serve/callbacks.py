"""Callbacks: the worker asks the host to run a host function and waits for its answer.

`CallbackTable` is the worker's: every callback still waited for, by id, settled by the
host's `callback_reply`. `RequestCallbacks` is one request's `HostCaller`: it refuses
functions the session has not declared, bounds each wait by the request's deadline and
`--callback-timeout-ms`, and when the request ends abandons whatever it still waits for,
telling the host (`callback_abandoned`) before the request's reply goes out.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dspy_bridge.domain.host import Failure, HostCallFailed, HostFunction, Purpose

ID_PREFIX = "cb-"

# Checks an answer's result for its purpose: the problem in a sentence, or None.
ResultCheck = Callable[[Any], str | None]
SendEvent = Callable[..., bool]


@dataclass(frozen=True, slots=True)
class Answer:
    """The host's answer: `result`, or `error` ({message, type?, retryable?})."""

    result: Any = None
    error: dict[str, Any] | None = None


@dataclass(slots=True)
class Waiting:
    request_id: int | str
    future: asyncio.Future[Answer]


class CallbackTable:
    """Every callback the worker still waits for. Ids count up (`cb-1`, `cb-2`, ...), so
    an id issued earlier but no longer waited for is told from one never issued without
    remembering it."""

    def __init__(self, send_event: SendEvent, timeout_ms: int) -> None:
        self._send_event = send_event
        self.timeout_ms = timeout_ms
        self._waiting: dict[str, Waiting] = {}
        self._issued = 0

    def counts(self) -> dict[str, int]:
        """For get_stats: callbacks waited for now, and issued since start."""
        return {"waiting": len(self._waiting), "issued": self._issued}

    def issue(
        self, request_id: int | str, event: dict[str, Any]
    ) -> tuple[str, asyncio.Future[Answer]] | None:
        """Send a `callback` event and wait for its answer; None if it cannot be sent."""
        self._issued += 1
        callback_id = f"{ID_PREFIX}{self._issued}"
        if not self._send_event("callback", callback_id=callback_id, request_id=request_id,
                                **event):
            return None
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._waiting[callback_id] = Waiting(request_id, future)
        return callback_id, future

    def settle(self, callback_id: str, answer: Answer) -> str | None:
        """`accepted`, `not_waiting` (issued, but no longer waited for), or None (never
        issued by this worker)."""
        waiting = self._waiting.pop(callback_id, None)
        if waiting is not None and not waiting.future.done():
            waiting.future.set_result(answer)
            return "accepted"
        return "not_waiting" if waiting is not None or self._was_issued(callback_id) else None

    def forget(self, callback_id: str) -> None:
        self._waiting.pop(callback_id, None)

    def abandon(self, callback_id: str, reason: str) -> None:
        """Stop waiting, and tell the host so it can stop the work."""
        waiting = self._waiting.pop(callback_id, None)
        if waiting is None:
            return
        waiting.future.cancel()
        self._send_event("callback_abandoned", callback_id=callback_id,
                         request_id=waiting.request_id, reason=reason)

    def _was_issued(self, callback_id: str) -> bool:
        number = callback_id.removeprefix(ID_PREFIX)
        return (callback_id.startswith(ID_PREFIX) and number.isascii() and number.isdigit()
                and not number.startswith("0") and int(number) <= self._issued)


class RequestCallbacks:
    """One request's `HostCaller` (see domain/host)."""

    def __init__(self, table: CallbackTable, loop: asyncio.AbstractEventLoop,
                 request_id: int | str, session_id: str,
                 lookup: Callable[[str], HostFunction | None], timeout_ms: int | None) -> None:
        self._table = table
        self._loop = loop
        self._request_id = request_id
        self._session_id = session_id
        self._lookup = lookup
        self._deadline = None if timeout_ms is None else loop.time() + timeout_ms / 1000
        self._outstanding: dict[str, None] = {}  # in the order issued
        self._threaded: set[concurrent.futures.Future[Any]] = set()
        self._closed = False

    async def call(self, function: str, purpose: Purpose, args: dict[str, Any],
                   check: ResultCheck | None = None) -> Any:
        def failed(reason: Failure, message: str, **more: Any) -> HostCallFailed:
            return HostCallFailed(reason, function, purpose, message, **more)

        if self._closed:
            raise failed(Failure.ENDED, "the request no longer waits for the host")
        if self._lookup(function) is None:
            raise failed(Failure.UNKNOWN_FUNCTION,
                         f"no host function {function!r} is declared in session "
                         f"{self._session_id!r}")
        own_s = self._table.timeout_ms / 1000
        left_s = math.inf if self._deadline is None else max(self._deadline - self._loop.time(), 0)
        wait_s = min(own_s, left_s)
        issued = self._table.issue(self._request_id, {
            "session_id": self._session_id, "function": function, "purpose": purpose.value,
            "args": args, "timeout_ms": max(math.ceil(wait_s * 1000), 1),
        })
        if issued is None:
            raise failed(Failure.UNSENDABLE, "the callback's arguments are too large to send")
        callback_id, future = issued
        self._outstanding[callback_id] = None
        try:
            if own_s < left_s:  # else the request's own deadline ends the wait
                answer = await asyncio.wait_for(future, own_s)
            else:
                answer = await future
        except TimeoutError:
            self._outstanding.pop(callback_id, None)
            self._table.abandon(callback_id, "callback_timeout")
            raise failed(Failure.TIMEOUT, f"the host did not answer within "
                         f"{self._table.timeout_ms} ms", retryable=True,
                         callback_id=callback_id) from None
        # A cancelled request leaves its callback outstanding: `close` abandons it with
        # the request's reason.
        self._outstanding.pop(callback_id, None)
        if answer.error is not None:
            raise failed(Failure.ERROR, str(answer.error.get("message", "")),
                         retryable=bool(answer.error.get("retryable", False)),
                         callback_id=callback_id, host_type=answer.error.get("type"))
        problem = None if check is None else check(answer.result)
        if problem is not None:
            raise failed(Failure.MALFORMED, problem, callback_id=callback_id)
        return answer.result

    def call_blocking(self, function: str, purpose: Purpose, args: dict[str, Any],
                      check: ResultCheck | None = None) -> Any:
        """`call` from a thread running DSPy code (BestOfN runs attempts synchronously)."""
        future = asyncio.run_coroutine_threadsafe(
            self.call(function, purpose, args, check), self._loop
        )
        self._threaded.add(future)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            raise HostCallFailed(Failure.ENDED, function, purpose,
                                 "the request no longer waits for the host") from None
        finally:
            self._threaded.discard(future)

    def close(self, reason: str) -> None:
        """The request is over: abandon every callback it still waits for (before its
        reply goes out), and refuse any later one (a thread that outlived the request)."""
        self._closed = True
        for future in list(self._threaded):
            future.cancel()
        for callback_id in self._outstanding:
            self._table.abandon(callback_id, reason)
        self._outstanding.clear()
