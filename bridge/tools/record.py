"""`dspy-bridge --record FILE`: append every frame in and out to FILE as a transcript.

Requests become `send` steps, responses `expect`, events `expect_event`, so that the
file replays as-is against a fresh worker (`dspy-bridge replay FILE`):

- secrets never reach the file: a sent string under a secret-looking key (`api_key`,
  `authorization`, `*token*`, `*secret*`, ..., directly or in a list) is written
  `"<redacted>"`, and so is every string the worker knows to be a secret; in replies
  such a string is kept when the worker already wrote `"<redacted>"`, else `"<any>"`;
- volatile values are written `"<any>"`: pids, the worker id, uptimes, durations,
  timestamps (keys like `*_at`, `since`, `last_used`, and any float that reads as a
  Unix time), RSS, latencies, tracebacks, `dspy_loaded`, in-flight counts, every
  `get_stats` figure and the known commands listed by an `unknown_command` error;
- ids the worker generated (an `*_id` value in a reply that the host never sent) are
  captured as `"<any:NAME>"` and every later use, in sends and replies, is written
  `"<var:NAME>"`; a reply string that merely contains one becomes `"<any>"` (unless the
  host sent that very string). A `callback` event's `callback_id` is always captured
  (`cb-1` is short, but its number depends on every callback before it), and its
  `timeout_ms` (the request's time left) is volatile.

`TranscriptRecorder` is the sans-I/O part (messages in, transcript lines out);
`Recorder` is the observer the worker calls, appending those lines to the file.
"""

from __future__ import annotations

import datetime
import threading
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from dspy_bridge import __version__
from dspy_bridge.domain.redaction import REDACTED, book, is_secret_key, redact
from dspy_bridge.tools import transcript as tx

# Keys whose value differs from run to run, wherever they appear in a reply.
VOLATILE_KEYS = frozenset(
    {
        "pid",
        "worker_id",
        "uptime_s",
        "duration_ms",
        "rss_bytes",
        "latency_ms",
        "traceback",
        "timestamp",
        "time",
        "last_used",
        "last_use",
        "last_used_s",
        "idle_s",
        "elapsed_ms",
        "elapsed_s",
        "dspy_loaded",
        "since",
    }
)
# Unix timestamps as floats (seconds since 1970: 2001 to 2286) are volatile anywhere.
EPOCH_FLOAT_RANGE = (1.0e9, 1.0e10)
VOLATILE_SUFFIXES = ("_at", "_time", "_ts")
# Keys of a command's `result` whose value depends on timing.
VOLATILE_RESULT_KEYS: dict[str, frozenset[str] | None] = {
    "ping": frozenset({"in_flight"}),
    "shutdown": frozenset({"in_flight"}),
    "get_stats": None,  # every figure
}
# `*_id` keys that never hold a generated id to capture.
NOT_GENERATED = frozenset({"worker_id", "request_id", "id"})
# `*_id` keys whose new values are always generated, however short.
ALWAYS_GENERATED = frozenset({"callback_id"})
# Keys of an event whose value depends on timing.
VOLATILE_EVENT_KEYS: dict[str, frozenset[str]] = {
    "ready": frozenset({"worker_id", "pid", "versions", "commands"}),
    "callback": frozenset({"timeout_ms"}),
}


def _is_volatile_key(key: Any) -> bool:
    return isinstance(key, str) and (key in VOLATILE_KEYS or key.endswith(VOLATILE_SUFFIXES))


def _valid_id(value: Any) -> bool:
    return isinstance(value, str) or (
        isinstance(value, int) and not isinstance(value, bool) and value >= 0
    )


class TranscriptRecorder:
    """Turns the frames of one worker session into transcript lines (sans-I/O)."""

    def __init__(self) -> None:
        self._commands: dict[Any, list[str]] = {}
        self._seen: set[str] = set()
        self._captured: dict[str, str] = {}  # generated value -> variable name
        self._counts: dict[str, int] = {}
        self._unanswered_invalid = 0  # recorded sends that will be answered with id nil

    @staticmethod
    def header(worker_args: Sequence[str], when: datetime.datetime | None = None) -> list[str]:
        stamp = (when or datetime.datetime.now(datetime.UTC)).isoformat(timespec="seconds")
        return [
            f"# recorded by dspy-bridge {__version__} at {stamp}",
            tx.format_step(tx.WorkerArgs(tuple(worker_args))),
        ]

    # ----- in -----

    def incoming(self, message: dict[str, Any]) -> list[str]:
        request_id = message.get("id")
        if _valid_id(request_id) and isinstance(message.get("command"), str):
            self._commands.setdefault(_key(request_id), []).append(message["command"])
        elif not _valid_id(request_id):
            self._unanswered_invalid += 1
        self._remember_strings(message)
        sent = self._scrub_sent(message)
        return [tx.format_step(tx.Send(sent))]

    def _remember_strings(self, value: Any) -> None:
        if isinstance(value, str):
            self._seen.add(value)
        elif isinstance(value, dict):
            for key, item in value.items():
                self._remember_strings(key)
                self._remember_strings(item)
        elif isinstance(value, list):
            for item in value:
                self._remember_strings(item)

    def _scrub_sent(self, value: Any, secret: bool = False) -> Any:
        if isinstance(value, str | bytes) and secret:
            return REDACTED
        if isinstance(value, str):
            name = self._captured.get(value)
            return f"<var:{name}>" if name else value
        if isinstance(value, dict):
            return {key: self._scrub_sent(item, is_secret_key(key)) for key, item in value.items()}
        if isinstance(value, list):
            return [self._scrub_sent(item, secret) for item in value]
        return value

    # ----- out -----

    def outgoing(self, message: dict[str, Any]) -> list[str]:
        if "event" in message and "id" not in message:
            name = message.get("event")
            volatile = VOLATILE_EVENT_KEYS.get(name, frozenset()) if isinstance(name, str) else ()
            event = {k: tx.ANY if k in volatile else v for k, v in message.items()}
            return [tx.format_step(tx.ExpectEvent(self._scrub_reply(event)))]
        request_id = message.get("id")
        command: str | None = None
        if request_id is None:
            if self._unanswered_invalid <= 0:
                return [
                    "# (a frame that was not a msgpack map cannot be recorded; its reply was:) "
                    + tx.dumps(message)
                ]
            self._unanswered_invalid -= 1
        else:
            pending = self._commands.get(_key(request_id))
            if pending:
                command = pending.pop(0)
                if not pending:
                    del self._commands[_key(request_id)]
        reply = dict(message)
        result = reply.get("result")
        if reply.get("success") is True and command in VOLATILE_RESULT_KEYS and isinstance(
            result, dict
        ):
            keys = VOLATILE_RESULT_KEYS[command]
            reply["result"] = {
                k: tx.ANY if keys is None or k in keys else v for k, v in result.items()
            }
        error = reply.get("error")
        if isinstance(error, dict) and isinstance(error.get("details"), dict):
            # The known commands grow with versions; the recording is about this one.
            if error.get("type") == "unknown_command" and "known" in error["details"]:
                reply["error"] = {**error, "details": {**error["details"], "known": tx.ANY}}
        return [tx.format_step(tx.Expect(self._scrub_reply(reply)))]

    def _scrub_reply(self, value: Any, key: Any = None, secret: bool = False) -> Any:
        if secret and isinstance(value, str | bytes) and value != REDACTED:
            return tx.ANY
        if isinstance(value, float) and EPOCH_FLOAT_RANGE[0] <= value < EPOCH_FLOAT_RANGE[1]:
            return tx.ANY
        if isinstance(value, str):
            if value in self._captured:
                return f"<var:{self._captured[value]}>"
            if value == tx.ANY:
                return value
            if value in self._seen:
                # The host sent this very string: replaying sends it again, as it is.
                return value
            if (
                isinstance(key, str)
                and key.endswith("_id")
                and key not in NOT_GENERATED
                and (key in ALWAYS_GENERATED or _looks_generated(value))
            ):
                return self._capture(key, value)
            if any(generated in value for generated in self._captured):
                return tx.ANY
            return value
        if isinstance(value, dict):
            out: dict[Any, Any] = {}
            for k, item in value.items():
                volatile = _is_volatile_key(k)
                out[k] = tx.ANY if volatile else self._scrub_reply(item, k, is_secret_key(k))
            return out
        if isinstance(value, list):
            return [self._scrub_reply(item, key, secret) for item in value]
        return value

    def _capture(self, key: str, value: str) -> str:
        count = self._counts.get(key, 0) + 1
        self._counts[key] = count
        name = f"{key}_{count}"
        self._captured[value] = name
        return f"<any:{name}>"


def _looks_generated(value: str) -> bool:
    """Generated ids are long and carry digits (`prog_3f9a12c0`, uuids); "default" is not."""
    return len(value) >= 8 and any(char.isdigit() for char in value)


def _key(request_id: Any) -> tuple[type, Any]:
    return (type(request_id), request_id)


class Recorder:
    """The worker's frame observer for `--record`: appends transcript lines to a file."""

    def __init__(
        self,
        stream: TextIO,
        worker_args: Sequence[str],
        scrub: Callable[[Any], Any] | None = None,
    ) -> None:
        self._stream = stream
        self._scrub = scrub or (lambda value: value)
        self._core = TranscriptRecorder()
        self._lock = threading.Lock()
        self._write(TranscriptRecorder.header(worker_args))

    @classmethod
    def on_stream(cls, stream: TextIO, worker_args: Sequence[str]) -> Recorder:
        """Append to a file opened for appending (a session after any already there);
        known secret values are scrubbed too."""
        if stream.tell() > 0:
            stream.write("\n")
        return cls(stream, worker_args, lambda value: redact(value, by_key=False,
                                                             secrets=book.held()))

    def incoming(self, message: dict[str, Any]) -> None:
        with self._lock:
            self._write(self._core.incoming(self._scrub(message)))

    def outgoing(self, message: dict[str, Any]) -> None:
        with self._lock:
            self._write(self._core.outgoing(self._scrub(message)))

    def _write(self, lines: list[str]) -> None:
        try:
            self._stream.write("".join(line + "\n" for line in lines))
            self._stream.flush()
        except (OSError, ValueError):
            pass  # a full disk must not take the worker down

    def close(self) -> None:
        with self._lock:
            try:
                self._stream.close()
            except OSError:
                pass


def worker_args_without_record(argv: Sequence[str]) -> list[str]:
    """The worker's flags minus `--record FILE`, for the transcript's `worker_args`."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--record":
            skip = True
            continue
        if arg.startswith("--record="):
            continue
        out.append(arg)
    return out

