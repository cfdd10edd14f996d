"""The secret walker and the book of held secrets, in-process (pure layers)."""

from __future__ import annotations

import contextvars
import datetime
import gc
import itertools
import json
import os
import select
from typing import Any
from unittest.mock import patch

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from dspy_bridge.domain.redaction import (
    NOT_SECRET_KEYS,
    REDACTED,
    SECRET_KEY,
    SecretBook,
    book,
    redact,
    scrub,
    secret_values,
)
from dspy_bridge.io import logs
from dspy_bridge.io.logs import LogQueue, configure_logging


class Owner:
    """Anything an LM's secrets can be tied to."""


def test_values_under_secret_keys_are_redacted_at_any_depth() -> None:
    redacted = redact(
        {
            "api_key": "sk-1",
            "nested": [{"Authorization": "Bearer x", "x_secret_value": "s", "ok": "fine"}],
            "access_token": "t",
            "password": "p",
            "api_key_env": "OPENAI_API_KEY",
            "usage": {"prompt_tokens": 3, "max_tokens": 5},
            "absent_key": {"api_key": None},
        }
    )
    assert redacted == {
        "api_key": REDACTED,
        "nested": [{"Authorization": REDACTED, "x_secret_value": REDACTED, "ok": "fine"}],
        "access_token": REDACTED,
        "password": REDACTED,
        "api_key_env": "OPENAI_API_KEY",
        "usage": {"prompt_tokens": 3, "max_tokens": 5},
        "absent_key": {"api_key": None},
    }


def test_omitted_secrets_are_left_out_with_their_paths() -> None:
    omitted: list[str] = []
    kept = redact(
        {"headers": {"Authorization": "Bearer abc"}, "seeds": [{"token": "t"}], "seed": 1},
        omitted=omitted,
        path="lm.extra",
    )
    assert kept == {"headers": {}, "seeds": [{}], "seed": 1}
    assert omitted == ["lm.extra.headers.Authorization", "lm.extra.seeds.0.token"]


def test_a_bearer_token_is_a_secret_by_itself() -> None:
    found = secret_values({"headers": {"Authorization": "Bearer tok-123456"}, "seed": "1234"})
    assert found == {"Bearer tok-123456", "tok-123456"}
    text = "upstream said: invalid token tok-123456 (header Bearer tok-123456)"
    assert scrub(text, found) == f"upstream said: invalid token {REDACTED} (header {REDACTED})"


def test_held_secrets_live_as_long_as_their_owner() -> None:
    secrets = SecretBook(environ={})
    first, second = Owner(), Owner()
    secrets.hold(first, ["sk-shared-1234", "sk-first-only"])
    secrets.hold(second, ["sk-shared-1234"])
    assert secrets.held() == {"sk-shared-1234", "sk-first-only"}
    del first
    gc.collect()
    assert secrets.held() == {"sk-shared-1234"}
    del second
    gc.collect()
    assert secrets.held() == frozenset() and len(secrets) == 0


def test_short_values_and_operator_secrets() -> None:
    secrets = SecretBook(environ={"OPENAI_API_KEY": "sk-operator-999", "HOME": "/root"})
    secrets.hold(Owner(), ["abc"])  # too short to scrub
    assert secrets.held() == {"sk-operator-999"}


def test_log_lines_are_json_and_redacted() -> None:
    read_end, write_end = os.pipe()
    sink = LogQueue(fd=write_end)
    configure_logging("info", sink)
    owner = Owner()
    book.hold(owner, ["sk-test-secret-123"])
    try:
        structlog.get_logger("t").info(
            "configured", api_key="sk-test-secret-123", note="uses sk-test-secret-123", level_ok=1
        )
        sink.drain(timeout=10)
    finally:
        structlog.reset_defaults()
    line = os.read(read_end, 1 << 16).decode().strip().splitlines()[-1]
    record = json.loads(line)
    assert record["api_key"] == REDACTED
    assert record["note"] == f"uses {REDACTED}"
    assert "sk-test-secret-123" not in line


# ----- the log line's cheaper steps say exactly what the plain ones said -----

KEYS = st.sampled_from(["api_key", "note", "Authorization", "max_tokens", "user_token", "a",
                        "x" * 70 + "secret", "x" * 70, "nested", 3])
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.binary(max_size=4)
    | st.sampled_from(["plain", "has sk-held-1234 in it", "sk-held-1234", "ab"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=20,
)


def plain_redact(value: Any, by_key: bool, secrets: list[str], omitted: list[str] | None,
                 path: str = "") -> Any:
    """The walker as first written: every key checked by the pattern, every value walked."""
    if isinstance(value, str):
        for secret in sorted(secrets, key=len, reverse=True):
            value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            secret_key = (isinstance(key, str) and key not in NOT_SECRET_KEYS
                          and bool(SECRET_KEY.search(key)))
            if by_key and secret_key and item is not None:
                if omitted is None:
                    out[key] = REDACTED
                else:
                    omitted.append(where)
            else:
                out[key] = plain_redact(item, by_key, secrets, omitted, where)
        return out
    if isinstance(value, list | tuple):
        return [plain_redact(item, by_key, secrets, omitted, f"{path}.{index}")
                for index, item in enumerate(value)]
    return value


@settings(max_examples=300, deadline=None)
@given(value=VALUES, by_key=st.booleans(), omit=st.booleans(),
       secrets=st.lists(st.sampled_from(["sk-held-1234", "held", "sk-held"]), max_size=3))
def test_the_walker_redacts_as_the_plain_walk_did(
    value: Any, by_key: bool, omit: bool, secrets: list[str]
) -> None:
    omitted: list[str] | None = [] if omit else None
    expected_omitted: list[str] | None = [] if omit else None
    assert redact(value, by_key=by_key, secrets=secrets, omitted=omitted) == plain_redact(
        value, by_key, secrets, expected_omitted)
    assert omitted == expected_omitted


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=2**62))
def test_log_timestamps_read_as_structlogs_iso_utc_stamps(nanoseconds: int) -> None:
    stamped = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC) + datetime.timedelta(
        microseconds=nanoseconds // 1000)
    with patch.object(logs.time, "time_ns", return_value=nanoseconds):
        ours = logs._stamp_utc(None, "info", {})["timestamp"]
    # structlog's TimeStamper(fmt="iso", utc=True) writes datetime.now(utc) so:
    assert ours == stamped.isoformat().replace("+00:00", "Z")


@given(VALUES)
def test_log_lines_render_as_json_dumps_with_repr_did(value: Any) -> None:
    line = {"event": "e", "value": value, "odd": Owner()}
    assert logs._json_line(line) == json.dumps(line, default=repr)


class CollectedText:
    """A sink that keeps what it is given (the chain writes lines; RequestLines lists)."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def write(self, text: str) -> int:
        self.texts.append(text)
        return len(text)

    def write_lines(self, lines: list[str]) -> None:
        self.texts.extend(lines)

    def flush(self) -> None:
        pass


HELD = ["sk-held-1234", "tenant-secret-99"]
TEXT = st.text(max_size=12) | st.sampled_from([*HELD, f"x{HELD[0]}y", "<b>\"\\\n", "é€😀"])


@settings(max_examples=300, deadline=None)
@given(
    request_id=st.none() | st.integers(min_value=-(2**63), max_value=2**64 - 1) | TEXT,
    command=TEXT, outcome=st.sampled_from(["ok", "timeout", "invalid_request"]) | TEXT,
    duration_ms=st.floats(min_value=0, max_value=1e9), session_id=st.none() | TEXT,
    message=st.none() | TEXT, worker_id=st.none() | TEXT,
    now_ns=st.integers(min_value=0, max_value=2**62),
)
def test_the_request_line_renders_as_the_chain_wrote_it(
    request_id: int | str | None, command: str, outcome: str, duration_ms: float,
    session_id: str | None, message: str | None, worker_id: str | None, now_ns: int,
) -> None:
    """RequestLines skips structlog's chain for the line written once a request: it must
    write the very text the chain writes for it, as a request's task logged it (its id,
    command and session bound in its context), held secrets scrubbed."""
    chain, direct = CollectedText(), CollectedText()
    owner = Owner()
    book.hold(owner, HELD)
    configure_logging("info", chain, worker_id)  # type: ignore[arg-type]
    fields: dict[str, Any] = {} if message is None else {"message": message}

    def as_a_task_logged_it() -> None:
        logs.bind_request(request_id, command, session_id)  # type: ignore[arg-type]
        structlog.get_logger("bridge").info(
            "request", id=request_id, command=command, duration_ms=round(duration_ms, 3),
            outcome=outcome, **fields,
        )

    try:
        with patch.object(logs.time, "time_ns", return_value=now_ns):
            contextvars.copy_context().run(as_a_task_logged_it)
            lines = logs.RequestLines(direct, "info", worker_id)  # type: ignore[arg-type]
            lines.write([lines.render(request_id, command, duration_ms, outcome,
                                      session_id=session_id, message=message)])
    finally:
        structlog.reset_defaults()
    assert direct.texts == chain.texts


@pytest.mark.parametrize(("level", "enabled"), [("debug", True), ("info", True),
                                                ("warning", False), ("error", False)])
def test_request_lines_are_written_at_info(level: str, enabled: bool) -> None:
    assert logs.RequestLines(CollectedText(), level).enabled is enabled  # type: ignore[arg-type]


NULL_SINK = LogQueue(fd=os.open(os.devnull, os.O_WRONLY))  # one writer thread for the module


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=2 * select.PIPE_BUF), max_size=40))
def test_lines_written_together_go_out_whole_in_writes_of_at_most_pipe_buf(
    sizes: list[int],
) -> None:
    """write_lines joins lines into writes a pipe takes whole (PIPE_BUF bytes), each as
    full as the next line allows; a longer line goes alone."""
    lines = [f"{index:03d}".ljust(size - 1, "x")[: size - 1] + "\n" for index, size in
             enumerate(sizes)]
    writes: list[bytes] = []
    with patch.object(NULL_SINK, "_put", writes.append):
        NULL_SINK.write_lines(lines)
    assert b"".join(writes) == "".join(lines).encode()
    for data in writes:
        assert data.endswith(b"\n")
        assert len(data) <= select.PIPE_BUF or data.count(b"\n") == 1
    for data, after in itertools.pairwise(writes):
        assert len(data) + len(after.split(b"\n")[0]) + 1 > select.PIPE_BUF
