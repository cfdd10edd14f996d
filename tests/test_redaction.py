"""The secret walker and the book of held secrets, in-process (pure layers)."""

from __future__ import annotations

import gc
import json
import os

import structlog

from dspy_bridge.domain.redaction import REDACTED, SecretBook, book, redact, scrub, secret_values
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
