"""The player: drives workers through a transcript's steps and checks each expectation.

`Player.play(steps)` raises `PlayFailed` at the first unmet expectation, carrying a
`Failure` (diff, worker stderr tail); `bridge.tools.replay` turns that into results.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dspy_bridge.protocol import codec
from dspy_bridge.protocol.envelope import request_id_of
from dspy_bridge.protocol.errors import BridgeError
from dspy_bridge.tools import transcript as tx
from dspy_bridge.tools.client import WorkerClient, WorkerExited

DEFAULT_TIMEOUT_S = 10.0
STARTUP_TIMEOUT_S = 10.0


# ----- failures -----


@dataclass(slots=True)
class Failure:
    message: str
    line: int = 0
    detail: str = ""
    stderr: list[str] = field(default_factory=list)


class PlayFailed(Exception):
    """Raised by `Player.play` at the first failure."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


# ----- the player -----


@dataclass(slots=True)
class _Session:
    worker: WorkerClient
    responses: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    sent: list[Any] = field(default_factory=list)  # ids sent, one per request
    answered: list[Any] = field(default_factory=list)  # ids whose response was consumed
    shutdown_ids: list[Any] = field(default_factory=list)  # ids of shutdown requests sent
    shutdown_sent: bool = False  # a shutdown was accepted: the worker is to exit 0
    bindings: tx.Bindings = field(default_factory=dict)
    exit_code: int | None = None
    exited: bool = False


class Player:
    """Plays the steps of one transcript; raises PlayFailed at the first failure."""

    def __init__(
        self,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        worker_args: Sequence[str] = (),
        worker_command: Sequence[str] | None = None,
        strict: bool = False,
        cwd: str | os.PathLike[str] | None = None,
        trace: Callable[[str], None] | None = None,
    ) -> None:
        self.timeout = timeout
        self.trace = trace
        self.worker_args = list(worker_args)
        self.worker_command = list(worker_command) if worker_command else None
        self.strict = strict
        self.cwd = cwd
        self.session: _Session | None = None
        self.matched: list[tuple[int, dict[str, Any]]] = []

    def play(self, steps: Iterable[tx.Step]) -> int:
        count = 0
        try:
            for step in steps:
                count += 1
                self._step(step)
            if self.session is not None:
                self._finish()
        finally:
            if self.session is not None:
                self.session.worker.kill()
                self.session.worker.close(0)
        return count

    # --- sessions ---

    def _start(self, extra_args: Sequence[str], line: int) -> _Session:
        worker = WorkerClient(
            [*self.worker_args, *extra_args], command=self.worker_command, cwd=self.cwd
        )
        if self.trace:
            self.trace(f"  (line {line}) start: {shlex.join(worker.argv)}")
        self.session = _Session(worker)
        # A loaded machine may take a while to start a process, whatever --timeout says.
        startup = max(self.timeout, STARTUP_TIMEOUT_S)
        deadline = time.monotonic() + startup
        while not any(event.get("event") == "ready" for event in self.session.events):
            if not self._pump(deadline):
                message = (
                    self._exit_text("before sending its ready event")
                    if self.session.exited
                    else f"the worker sent no ready event within {startup:g} s"
                )
                raise self._fail(message, line)
        return self.session

    def _current(self, line: int) -> _Session:
        return self.session if self.session is not None else self._start((), line)

    def _finish(self) -> None:
        session = self.session
        assert session is not None
        # Whether the worker is to exit by itself depends on its answer to shutdown.
        deadline = time.monotonic() + self.timeout
        while session.shutdown_ids and not session.shutdown_sent and self._pump(deadline):
            pass
        if session.shutdown_sent:
            self._await_exit(session, "of shutdown", "after shutdown")
        else:
            early = session.worker.process.poll()
            if session.exited or early is not None:
                self._note_exit(early if early is not None else session.exit_code)
                raise self._fail(self._exit_text("before the transcript ended"), 0)
            session.worker.close_input()
            self._await_exit(session, "of its stdin closing", "when its stdin closed")
        # Take in whatever it sent before exiting, for --strict.
        deadline = time.monotonic() + self.timeout
        while self._pump(deadline):
            pass
        if self.strict and session.responses:
            raise self._fail(
                f"{len(session.responses)} response(s) arrived that no expect consumed",
                0,
                "\n".join("unexpected: " + tx.show(message) for message in session.responses),
            )
        session.worker.close(0)
        self.session = None

    # --- steps ---

    def _await_exit(self, session: _Session, within: str, when: str) -> None:
        """The worker must exit with 0 within the timeout (`within`/`when` say of what)."""
        code = session.worker.wait(self.timeout)
        if code is None:
            raise self._fail(f"the worker did not exit within {self.timeout:g} s {within}", 0)
        if code != 0:
            raise self._fail(f"the worker exited with code {code} {when}", 0)

    def _step(self, step: tx.Step) -> None:
        if isinstance(step, tx.WorkerArgs):
            if self.session is not None:
                self._finish()
            self._start(step.args, step.line)
        elif isinstance(step, tx.Send):
            session = self._current(step.line)
            message = self._substitute(step.message, step.line)
            session.sent.append(request_id_of(message))
            if message.get("command") == "shutdown":
                session.shutdown_ids.append(request_id_of(message))
            self._write(codec.pack(message), step.line)
        elif isinstance(step, tx.SendValue):
            session = self._current(step.line)
            value = self._substitute(step.value, step.line)
            session.sent.append(request_id_of(value))
            self._write(codec.pack(value), step.line)
        elif isinstance(step, tx.SendRaw):
            session = self._current(step.line)
            session.sent.append(_id_in_payload(step.payload))
            self._write(step.payload, step.line)
        elif isinstance(step, tx.Expect):
            self._expect(step)
        else:
            self._expect_event(step)

    def _substitute(self, value: Any, line: int) -> Any:
        assert self.session is not None
        try:
            return tx.substitute(value, self.session.bindings)
        except KeyError as exc:
            raise self._fail(f"<var:{exc.args[0]}> is used before any <any:...> captured it",
                             line) from None

    def _write(self, payload: bytes, line: int) -> None:
        assert self.session is not None
        if self.trace:
            try:
                shown = tx.show(codec.unpack(payload), 500)
            except BridgeError:
                shown = tx.show(payload, 500)
            self.trace(f"  (line {line}) > {shown}")
        try:
            self.session.worker.send_payload(payload)
        except WorkerExited:
            self._note_exit(self.session.worker.wait(2.0))
            raise self._fail(self._exit_text("before this frame could be sent"), line) from None

    def _expect(self, step: tx.Expect) -> None:
        session = self._current(step.line)
        expected = step.message
        wanted: Any = expected.get("id")
        has_id = "id" in expected and not (
            isinstance(wanted, str) and (wanted == tx.ANY or tx.capture_name(wanted))
        )
        if not has_id:
            self._expect_any_id(step, session)
            return
        if isinstance(wanted, str) and tx.variable_name(wanted) is not None:
            wanted = self._substitute(wanted, step.line)
        label = tx.dumps(wanted)
        outstanding = sum(1 for sent in session.sent if tx.same_id(sent, wanted)) - sum(
            1 for done in session.answered if tx.same_id(done, wanted)
        )
        if wanted is not None and outstanding <= 0:
            reason = (
                "was never sent"
                if not any(tx.same_id(sent, wanted) for sent in session.sent)
                else "has already been answered (each request gets one response)"
            )
            raise self._fail(
                f"expects a response to id {label}, which {reason}",
                step.line,
                "at id:\n    expected: " + label
                + "\n    ids sent so far: "
                + (", ".join(tx.dumps(sent) for sent in session.sent) or "none"),
            )
        deadline = time.monotonic() + self.timeout
        while True:
            candidates = [
                index
                for index, actual in enumerate(session.responses)
                if tx.same_id(wanted, actual.get("id"))
            ]
            first: tx.MatchResult | None = None
            for index in candidates:
                result = tx.match(expected, session.responses[index], session.bindings)
                if result.ok:
                    session.bindings = result.bindings
                    session.answered.append(wanted)
                    self.matched.append((step.line, session.responses[index]))
                    del session.responses[index]
                    return
                first = first or result
            # A mismatch is final once every outstanding request with this id has answered
            # (for nil: every frame sent whose id the worker could not know).
            exhausted = len(candidates) >= max(outstanding, 1)
            if first is not None and (exhausted or not self._pump(deadline)):
                assert first.mismatch is not None
                actual = session.responses[candidates[0]]
                raise self._fail(
                    f"the response to id {label} does not match",
                    step.line,
                    _diff_text(first.mismatch, expected, actual, step.line),
                )
            if first is None and not self._pump(deadline):
                raise self._fail(
                    self._waiting_text(f"a response to id {label}"),
                    step.line,
                    "expected: " + tx.show(expected),
                )

    def _expect_any_id(self, step: tx.Expect, session: _Session) -> None:
        """An `expect` without a usable id: the first buffered or later response matching."""
        deadline = time.monotonic() + self.timeout
        while True:
            for index, actual in enumerate(session.responses):
                result = tx.match(step.message, actual, session.bindings)
                if result.ok:
                    session.bindings = result.bindings
                    session.answered.append(actual.get("id"))
                    self.matched.append((step.line, actual))
                    del session.responses[index]
                    return
            if not self._pump(deadline):
                detail = "expected: " + tx.show(step.message)
                if session.responses:
                    detail += "\nunmatched responses: " + ", ".join(
                        tx.show(message, 300) for message in session.responses
                    )
                raise self._fail(
                    self._waiting_text("a matching response"), step.line, detail
                )

    def _expect_event(self, step: tx.ExpectEvent) -> None:
        session = self._current(step.line)
        expected = step.message
        deadline = time.monotonic() + self.timeout
        while True:
            for index, actual in enumerate(session.events):
                result = tx.match(expected, actual, session.bindings)
                if result.ok:
                    session.bindings = result.bindings
                    self.matched.append((step.line, actual))
                    del session.events[index]
                    return
            if not self._pump(deadline):
                name = expected.get("event")
                candidates = [e for e in session.events if e.get("event") == name]
                if candidates:
                    mismatch = tx.match(expected, candidates[0], session.bindings).mismatch
                    assert mismatch is not None
                    detail = "closest event that arrived:\n" + _diff_text(
                        mismatch, expected, candidates[0], step.line
                    )
                else:
                    detail = "expected (line {}): {}\nevents that arrived unmatched: {}".format(
                        step.line,
                        tx.show(expected),
                        ", ".join(tx.show(e, 200) for e in session.events) or "none",
                    )
                what = f"an event {tx.dumps(name)} matching the expectation"
                raise self._fail(self._waiting_text(what), step.line, detail)

    # --- reading ---

    def _pump(self, deadline: float) -> bool:
        """Read one message into the buffers; False on timeout or once the worker exited."""
        session = self.session
        assert session is not None
        if session.exited:
            return False
        try:
            message = session.worker.receive(max(deadline - time.monotonic(), 0))
        except WorkerExited as exc:
            self._note_exit(exc.returncode)
            return False
        except ValueError as exc:
            raise self._fail(str(exc), 0) from None
        if message is None:
            return False
        if self.trace:
            self.trace(f"  < {tx.show(message, 500)}")
        if "event" in message and "id" not in message:
            session.events.append(message)
        else:
            session.responses.append(message)
            self._note_shutdown_reply(message)
        return True

    def _note_shutdown_reply(self, message: dict[str, Any]) -> None:
        session = self.session
        assert session is not None
        for index, shutdown_id in enumerate(session.shutdown_ids):
            if tx.same_id(shutdown_id, message.get("id")):
                del session.shutdown_ids[index]
                if message.get("success") is True:
                    session.shutdown_sent = True
                return

    def _note_exit(self, code: int | None) -> None:
        assert self.session is not None
        self.session.exited = True
        self.session.exit_code = code

    def _exit_text(self, when: str) -> str:
        assert self.session is not None
        how = "after shutdown" if self.session.shutdown_sent else "unexpectedly"
        return f"the worker exited {how} (exit code {self.session.exit_code}) {when}"

    def _waiting_text(self, what: str) -> str:
        assert self.session is not None
        if self.session.exited:
            return self._exit_text(f"while waiting for {what}")
        return f"timed out after {self.timeout:g} s waiting for {what}"

    def _fail(self, message: str, line: int, detail: str = "") -> PlayFailed:
        stderr: list[str] = []
        # An exit explains itself in the worker's last log lines; so does a timeout (was
        # DSPy still loading? did the request run?).
        if self.session is not None and (
            self.session.exited or "exit" in message or "timed out" in message
        ):
            stderr = self.session.worker.stderr_tail()
        return PlayFailed(Failure(message, line, detail, stderr))


def _diff_text(mismatch: tx.Mismatch, expected: Any, actual: Any, line: int) -> str:
    return (
        mismatch.describe()
        + f"\nexpected (line {line}): {tx.show(expected)}"
        + f"\nactual:{' ' * (len(str(line)) + 11)}{tx.show(actual)}"
    )


def _id_in_payload(payload: bytes) -> Any:
    """The id a raw frame carries, if it decodes to a map with one (for bookkeeping)."""
    try:
        value = codec.unpack(payload)
    except BridgeError:
        return None
    return request_id_of(value)
