"""The secret walker and the book of held secrets, in-process (pure layers)."""

from __future__ import annotations

import datetime
import gc
import json
import os
from typing import Any
from unittest.mock import patch

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
