"""LMs: a `dspy.LM` built from a checked config, its fingerprint, and litellm.

A mock config gets the in-process mock engine; any other goes through DSPy's provider
engines with the key, base URL and timeout it was given. litellm, whose import takes
seconds, is imported by `import_litellm` (off the event loop, see `Engine.lm`), which
also puts the secret-scrubbing filter on its log handlers.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dspy

from dspy_bridge.domain.breakers import BreakerSettings
from dspy_bridge.domain.redaction import book, scrub
from dspy_bridge.engine.errors import truncate
from dspy_bridge.engine.mock import AsyncMockEngine, MockEngine
from dspy_bridge.protocol.errors import invalid_field

if TYPE_CHECKING:
    from dspy_bridge.domain.lm import CheckedLm


@dataclass(eq=False)
class LmHandle:
    checked: CheckedLm
    lm: Any  # dspy.LM
    fingerprint: str

    @property
    def model(self) -> str:
        return self.checked.config.model

    @property
    def breaker_settings(self) -> BreakerSettings:
        return self.checked.breaker

    @property
    def stored_bytes(self) -> int:
        return self.checked.stored_bytes


def canonical(value: Any) -> Any:
    if isinstance(value, dict):
        return sorted(([canonical(k), canonical(v)] for k, v in value.items()), key=repr)
    if isinstance(value, list | tuple):
        return [canonical(item) for item in value]
    if isinstance(value, bytes):
        return {"bytes": value.hex()}
    return value


def fingerprint(checked: CheckedLm) -> str:
    """Stable identity of an LM config (the key enters only as a digest)."""
    material = {
        "config": checked.config.model_dump(exclude_none=True),
        "key": None if checked.api_key is None
        else hashlib.sha256(checked.api_key.encode()).hexdigest(),
    }
    text = json.dumps(canonical(material), default=repr, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def build_lm(checked: CheckedLm, field_name: str = "model") -> LmHandle:
    config = checked.config
    stateful_mock = checked.mock is not None and checked.mock.stateful
    common: dict[str, Any] = {
        "temperature": config.temperature,
        "max_tokens": config.max_tokens,
        "cache": (not stateful_mock) if config.cache is None else config.cache,
        "num_retries": 3 if config.num_retries is None else config.num_retries,
    }
    if config.top_p is not None:
        common["top_p"] = config.top_p
    try:
        if checked.mock is not None:
            engine = MockEngine(checked.mock, config.model, config.timeout_s)
            lm = dspy.LM(config.model, engine=engine, async_engine=AsyncMockEngine(engine),
                         **common)
        else:
            extra = dict(checked.extra)
            selection = extra.pop("engine", "auto")
            model_type = extra.pop("model_type", "chat")
            client: dict[str, Any] = {}
            if checked.api_key is not None:
                client["api_key"] = checked.api_key
            if config.api_base is not None:
                client["api_base"] = config.api_base
            if config.timeout_s is not None:
                client["timeout"] = config.timeout_s
            lm = dspy.LM(config.model, model_type=model_type, engine=selection,
                         **common, **client, **extra)
    except (ValueError, TypeError, dspy.LMError) as exc:
        raise invalid_field(
            field_name, f"DSPy refused this LM: {truncate(str(exc), 500, checked.secrets)}"
        ) from None
    handle = LmHandle(checked, lm, fingerprint(checked))
    book.hold(handle, checked.secrets)  # for as long as the handle is in use
    return handle


# ----- litellm: its import and its logs -----


LITELLM_LOGGERS = ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy")


class RedactingFilter(logging.Filter):
    """Scrub known secrets from stdlib log records (DSPy, litellm, httpx) before they
    reach stderr; the worker's own structlog lines are redacted by its processor."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        scrubbed = scrub(message, book.held())
        if scrubbed != message:
            record.msg, record.args = scrubbed, None
        return True


def install_log_redaction(*logger_names: str) -> None:
    for name in logger_names:
        for handler in logging.getLogger(name or None).handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())


def import_litellm() -> Any:
    from dspy.clients._litellm import get_litellm

    litellm = get_litellm(feature="dspy.LM")
    install_log_redaction(*LITELLM_LOGGERS)
    for name in LITELLM_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    return litellm
