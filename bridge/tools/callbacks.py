"""Host functions for the Python host: Python callables the worker may call back.

A `HostFunction` is a callable with the declaration `register_tools` sends for it
(`name`, `description`, `parameters`). When the worker sends a `callback` event for a
function the host registered, `WorkerClient` makes a `Callback` record, runs the callable
in a thread of its own (`answer` builds the `callback_reply` arguments from its return
value or exception) and keeps the record up to date: the reply it sent, the worker's
answer to that reply, and whether the worker abandoned the callback meanwhile.

The record's `abandoned` event lets a long-running callable stop early: a host function
registered with `pass_callback=True` receives the record as its first argument.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dspy_bridge.protocol import codec
from dspy_bridge.protocol.host import Event, HostItem, Response

# The worker refuses longer error texts (`invalid_args`), which would leave the callback
# waiting for a proper answer until it times out: they are cut to length instead.
MAX_ERROR_MESSAGE_CHARS = 8192
MAX_ERROR_TYPE_CHARS = 100
REPLY_ID_PREFIX = "callback_reply:"

HostCallable = Callable[..., Any]


class HostFunctionError(Exception):
    """Raised by a host function to answer an error with a chosen `type` and `retryable`
    (any other exception answers its message, with the worker's defaults)."""

    def __init__(self, message: str, *, type: str | None = None, retryable: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.type = type
        self.retryable = retryable


@dataclass(frozen=True, slots=True)
class HostFunction:
    """A Python callable serving a host function. It is called with the callback's `args`
    as keyword arguments (a ReAct tool's arguments; `inputs`/`outputs` for a reward;
    `model`/`inputs`/`outputs` for a mock generator), after the `Callback` record when
    `pass_callback` is set. Its return value is the answer's `result`."""

    name: str
    fn: HostCallable
    description: str | None = None
    parameters: Mapping[str, Any] | None = None
    pass_callback: bool = False

    def declaration(self) -> dict[str, Any]:
        """The entry of `register_tools`' `tools` list for this function."""
        declared: dict[str, Any] = {"name": self.name}
        if self.description is not None:
            declared["description"] = self.description
        if self.parameters is not None:
            declared["parameters"] = dict(self.parameters)
        return declared


class Callback:
    """One `callback` event the client answers with a registered function.

    `reply` is the `callback_reply` arguments sent (None until sent, and for good when the
    worker abandoned the callback before the function returned: `skipped`); `response` is
    the worker's response to that reply; `abandon_reason` the `callback_abandoned` reason.
    `wait(timeout)` waits until the record is settled: the reply answered, skipped, or
    unsendable (`send_error`).
    """

    def __init__(self, event: dict[str, Any]) -> None:
        self.event = event
        self.abandoned = threading.Event()
        self.abandon_reason: str | None = None
        self.reply: dict[str, Any] | None = None
        self.response: dict[str, Any] | None = None
        self.skipped = False
        self.send_error: str | None = None
        self._settled = threading.Event()

    @property
    def callback_id(self) -> str:
        return str(self.event.get("callback_id"))

    @property
    def request_id(self) -> Any:
        return self.event.get("request_id")

    @property
    def session_id(self) -> Any:
        return self.event.get("session_id")

    @property
    def function(self) -> str:
        return str(self.event.get("function"))

    @property
    def purpose(self) -> Any:
        return self.event.get("purpose")

    @property
    def args(self) -> Any:
        return self.event.get("args")

    @property
    def timeout_ms(self) -> Any:
        return self.event.get("timeout_ms")

    @property
    def reply_id(self) -> str:
        """The request id of this callback's `callback_reply` (one per callback)."""
        return REPLY_ID_PREFIX + self.callback_id

    @property
    def settled(self) -> bool:
        return self._settled.is_set()

    @property
    def accepted(self) -> bool | None:
        """Whether the worker took the reply (None: no answer to a reply yet)."""
        if self.response is None or not self.response.get("success"):
            return None if self.response is None else False
        result = self.response.get("result")
        return isinstance(result, dict) and result.get("accepted") is True

    def wait(self, timeout: float | None) -> bool:
        return self._settled.wait(timeout)

    def mark_abandoned(self, reason: Any) -> None:
        self.abandon_reason = str(reason)
        self.abandoned.set()

    def settle(self) -> None:
        self._settled.set()

    def __repr__(self) -> str:
        state = (
            "skipped" if self.skipped
            else f"accepted={self.accepted}" if self.response is not None
            else "replied" if self.reply is not None
            else "running"
        )
        abandoned = f", abandoned={self.abandon_reason}" if self.abandon_reason else ""
        return f"<Callback {self.callback_id} {self.function} {state}{abandoned}>"


def answer(function: HostFunction, callback: Callback) -> dict[str, Any]:
    """Run the function for this callback; the `callback_reply` arguments it answers: its
    return value as `result` (when msgpack can carry it), or `error` from its exception."""
    try:
        args = callback.args
        if not isinstance(args, dict):
            raise TypeError(f"the callback's args are not a map: {args!r:.100}")
        if function.pass_callback:
            value = function.fn(callback, **args)
        else:
            value = function.fn(**args)
        codec.pack(value)
    except HostFunctionError as exc:
        return error_reply(callback.callback_id, exc.message, exc.type, exc.retryable)
    except codec.EncodeError as exc:
        return error_reply(
            callback.callback_id, f"the result of {function.name} cannot be sent: {exc}"
        )
    except Exception as exc:  # noqa: BLE001 - any failure of the host's code is its answer
        return error_reply(callback.callback_id, str(exc) or type(exc).__name__)
    return {"callback_id": callback.callback_id, "result": value}


def error_reply(
    callback_id: str, message: str, type: str | None = None, retryable: bool = False
) -> dict[str, Any]:
    error: dict[str, Any] = {"message": message[:MAX_ERROR_MESSAGE_CHARS], "retryable": retryable}
    if type is not None:
        error["type"] = type[:MAX_ERROR_TYPE_CHARS]
    return {"callback_id": callback_id, "error": error}


DEFAULT_KEEP_SETTLED = 1000


class CallbackServer:
    """The host functions a client registered, and the callbacks they serve: by callback
    id, and by the request id of their reply. The client's reader thread hands it every
    item (`take`); each callback runs in a thread of its own, which answers through
    `send_request` (a `callback_reply` request) unless the worker abandoned it.

    Every callback not yet settled is kept, and of the settled ones the latest
    `keep_settled`: a long-lived client's records do not grow without end."""

    def __init__(self, send_request: Callable[[dict[str, Any]], None],
                 keep_settled: int = DEFAULT_KEEP_SETTLED) -> None:
        self._send_request = send_request
        self._keep_settled = keep_settled
        self._functions: dict[str, HostFunction] = {}
        self._callbacks: dict[str, Callback] = {}
        self._replies: dict[str, Callback] = {}
        self._lock = threading.Lock()

    def register(self, function: HostFunction) -> HostFunction:
        with self._lock:
            self._functions[function.name] = function
        return function

    def unregister(self, name: str) -> None:
        with self._lock:
            self._functions.pop(name, None)

    @property
    def functions(self) -> dict[str, HostFunction]:
        with self._lock:
            return dict(self._functions)

    def declarations(self, names: Sequence[str] | None = None) -> list[dict[str, Any]]:
        functions = self.functions
        chosen = list(functions) if names is None else list(names)
        return [functions[name].declaration() for name in chosen]

    @property
    def callbacks(self) -> list[Callback]:
        with self._lock:
            return list(self._callbacks.values())

    def callback(self, callback_id: str) -> Callback | None:
        with self._lock:
            return self._callbacks.get(callback_id)

    def take(self, item: HostItem) -> bool:
        """Reader thread: whether the item belongs to a registered function's callback
        (and was taken care of), or is for the client's `receive`."""
        if isinstance(item, Response):
            with self._lock:
                record = self._replies.pop(item.id, None) if isinstance(item.id, str) else None
            if record is None:
                return False
            record.response = item.message
            record.settle()
            return True
        if not isinstance(item, Event):
            return False
        if item.name == "callback":
            return self._start(item.message)
        if item.name == "callback_abandoned":
            callback_id = item.message.get("callback_id")
            with self._lock:
                record = self._callbacks.get(callback_id) if isinstance(callback_id, str) else None
                if record is None:
                    return False
                record.mark_abandoned(item.message.get("reason"))
            return True
        return False

    def _start(self, message: dict[str, Any]) -> bool:
        name, callback_id = message.get("function"), message.get("callback_id")
        if not isinstance(name, str) or not isinstance(callback_id, str):
            return False
        with self._lock:
            function = self._functions.get(name)
            if function is None:
                return False
            record = Callback(message)
            self._callbacks[callback_id] = record
            self._forget_settled()
        threading.Thread(target=self._serve, args=(function, record),
                         name=f"callback-{callback_id}", daemon=True).start()
        return True

    def _forget_settled(self) -> None:
        """Under the lock: drop the oldest settled records past `keep_settled`."""
        if len(self._callbacks) <= self._keep_settled:
            return
        settled = [cid for cid, record in self._callbacks.items() if record.settled]
        for callback_id in settled[: max(0, len(settled) - self._keep_settled)]:
            del self._callbacks[callback_id]

    def _serve(self, function: HostFunction, record: Callback) -> None:
        """A callback's own thread: run the function, send its answer (unless abandoned)."""
        reply = answer(function, record)
        with self._lock:
            if record.abandoned.is_set():
                record.skipped = True
                record.settle()
                return
            record.reply = reply
            self._replies[record.reply_id] = record
        try:
            self._send_request({"id": record.reply_id, "command": "callback_reply",
                                "args": reply})
        except Exception as exc:  # noqa: BLE001 - the worker exited, or the id is in use
            with self._lock:
                self._replies.pop(record.reply_id, None)
            record.send_error = str(exc)
            record.settle()

    def settle_all(self) -> None:
        """The worker's output ended: no reply will be answered any more."""
        with self._lock:
            waiting = list(self._replies.values())
            self._replies.clear()
        for record in waiting:
            record.send_error = record.send_error or "the worker exited"
            record.settle()
