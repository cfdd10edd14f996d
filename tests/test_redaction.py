"""Secrets never reach a log line or a reply."""

from __future__ import annotations

import json
import os
from typing import Any

import structlog

from bridge.logs import LogQueue, configure_logging
from bridge.redaction import REDACTED, Redactor, redactor


def test_values_under_secret_keys_are_redacted_at_any_depth() -> None:
    redacted = Redactor().redact(
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


def test_registered_secret_values_are_scrubbed_from_every_string() -> None:
    local = Redactor()
    local.register("sk-live-abcdef")
    message = {"error": {"message": "auth failed for key sk-live-abcdef"}, "token": "kept"}
    assert local.redact(message, by_key=False) == {
        "error": {"message": f"auth failed for key {REDACTED}"},
        "token": "kept",
    }


def test_replies_keep_secret_looking_keys_when_no_secret_is_known() -> None:
    value: dict[str, Any] = {"outputs": {"token": "abc"}}
    assert Redactor().redact(value, by_key=False) is value


def test_log_lines_are_json_and_redacted() -> None:
    read_end, write_end = os.pipe()
    sink = LogQueue(fd=write_end)
    configure_logging("info", sink)
    redactor.register("sk-test-secret-123")
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
