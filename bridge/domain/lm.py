"""LM configurations from the wire: their schema, the checks pydantic cannot express,
and what keeping one costs and holds secret. No DSPy here: the engine builds LMs from a
`CheckedLm`."""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator

from dspy_bridge.domain.breakers import BreakerSettings
from dspy_bridge.domain.limits import DEFAULT_API_KEY_ENV_ALLOW
from dspy_bridge.domain.models import Args, FunctionName, invalid_from
from dspy_bridge.domain.redaction import REDACTED, redact, secret_values
from dspy_bridge.protocol import codec
from dspy_bridge.protocol.errors import invalid_field

MODEL_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/\S+$")
MOCK_PATTERN = re.compile(r"^mock(/[A-Za-z0-9_.\-:]{1,100})?$")
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,254}$"
EXTRA_RESERVED = frozenset({
    "model", "api_key", "api_base", "base_url", "temperature", "top_p", "max_tokens",
    "timeout", "num_retries", "cache", "callbacks", "provider", "async_engine", "messages",
    "n", "stream", "rollout_id",
})
EXTRA_ENGINES = ("auto", "litellm", "lm15")
EXTRA_MODEL_TYPES = ("chat", "responses")
MockError = Literal[
    "rate_limit", "server", "timeout", "transport", "auth", "billing", "invalid_request",
    "context_length",
]


class MockFail(Args):
    """Simulated provider failures: the first `times` calls (every call if absent)."""

    times: Annotated[int, Field(ge=0)] | None = None
    error: MockError = "rate_limit"
    message: Annotated[str, Field(max_length=2000)] | None = None


class MockOptions(Args):
    responses: dict[str, Any] = Field(default_factory=dict)
    default: Any = None
    sequence: list[Any] = Field(default_factory=list)
    latency_ms: Annotated[int, Field(ge=0, le=3_600_000)] = 0
    fail: MockFail | None = None
    # A host function declared in the calling session: it answers every call.
    generator: FunctionName | None = None

    @field_validator("fail", mode="before")
    @classmethod
    def _expand_fail(cls, fail: Any) -> Any:
        """`fail: N` is short for `{times: N}`, `fail: true` for `{}` (every call fails)."""
        if isinstance(fail, bool):
            return {} if fail else None
        if isinstance(fail, int):
            return {"times": fail}
        return fail

    @property
    def stateful(self) -> bool:
        """Answers that depend on the call's order, which a response cache would defeat."""
        return bool(self.sequence) or self.fail is not None or self.generator is not None


# The mock's options, also accepted at the top level of an LM config (see LmConfig).
MOCK_OPTION_NAMES = tuple(MockOptions.model_fields)


class BreakerConfig(Args):
    failure_threshold: Annotated[int, Field(ge=1, le=1_000_000)] = 5
    cooldown_ms: Annotated[int, Field(ge=1, le=86_400_000)] = 30_000


PROVIDER = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{0,63}$")


class LmConfig(Args):
    """An LM: DSPy's `provider/model` string (or `mock`) and its settings."""

    model: Annotated[str, Field(min_length=1, max_length=300)]
    api_key: Annotated[str, Field(min_length=1, max_length=8192)] | None = None
    api_key_env: Annotated[str, Field(pattern=ENV_NAME)] | None = None
    api_base: Annotated[str, Field(min_length=1, max_length=2048)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    max_tokens: Annotated[int, Field(gt=0, le=10_000_000)] | None = None
    timeout_s: Annotated[float, Field(gt=0, le=86_400)] | None = None
    num_retries: Annotated[int, Field(ge=0, le=20)] | None = None
    cache: bool | None = None
    extra: dict[str, Any] | None = None
    circuit_breaker: BreakerConfig | None = None
    # The mock's options belong in `extra`; for convenience they are also taken here
    # (mock models only) and moved into `extra`.
    responses: Any = None
    default: Any = None
    sequence: Any = None
    latency_ms: Any = None
    fail: Any = None
    generator: Any = None

    @model_validator(mode="before")
    @classmethod
    def _model_shorthand(cls, value: Any) -> Any:
        # `lm: "mock/x"` is short for `lm: {model: "mock/x"}`; DSPex's form, `{provider:
        # "openai", model: "gpt-4o-mini"}`, for `{model: "openai/gpt-4o-mini"}`.
        if isinstance(value, str):
            return {"model": value}
        if isinstance(value, dict) and "provider" in value:
            value = dict(value)
            provider, model = value.pop("provider"), value.get("model")
            if not isinstance(provider, str) or not PROVIDER.match(provider):
                raise ValueError("provider must be a provider name (letters, digits, _ and -)")
            if not isinstance(model, str) or "/" in model:
                raise ValueError("with provider, model is the model's own name (no '/')")
            value["model"] = f"{provider}/{model}"
        return value

    @field_validator("api_base")
    @classmethod
    def _http_base(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^\s]+$", value):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @property
    def is_mock(self) -> bool:
        return self.model == "mock" or self.model.startswith("mock/")


# A command's `lm`; DSPex's name for it, `lm_config`, is taken too.
OptionalLm = Annotated[LmConfig | None,
                       Field(default=None, validation_alias=AliasChoices("lm", "lm_config"))]


@dataclass(frozen=True, slots=True)
class CheckedLm:
    """An LM config checked against everything the wire cannot express, secret apart."""

    config: LmConfig  # with api_key removed
    api_key: str | None
    mock: MockOptions | None
    extra: dict[str, Any]
    breaker: BreakerSettings

    def public(self) -> dict[str, Any]:
        """The config as replies show it: no secret values (the mock's options hold none,
        but a key pasted into one of them is scrubbed like anywhere else in the config)."""
        data: dict[str, Any] = redact(self.config.model_dump(exclude_none=True), by_key=False,
                                      secrets=self.secrets)
        if self.api_key is not None and self.config.api_key_env is None:
            data["api_key"] = REDACTED
        if self.config.extra is not None and self.mock is None:
            data["extra"] = redact(data["extra"])
        return data

    def exportable(self) -> tuple[dict[str, Any], list[str]]:
        """The config for an export document, and the paths of the secrets left out."""
        data = redact(self.config.model_dump(exclude_none=True), by_key=False,
                      secrets=self.secrets)
        omitted = []
        if self.api_key is not None and self.config.api_key_env is None:
            omitted.append("lm.api_key")
        if self.config.extra is not None and self.mock is None:
            data["extra"] = redact(data["extra"], omitted=omitted, path="lm.extra")
        return data, omitted

    @property
    def stored_bytes(self) -> int:
        """What keeping this LM costs its session, in msgpack bytes (mock answers count)."""
        return len(codec.pack(self.config.model_dump(exclude_none=True))) + len(
            self.api_key or "")

    @property
    def secrets(self) -> frozenset[str]:
        """The values to scrub from this LM's error text: its key, and (real providers
        only: the mock's options are canned answers) secret values of `extra`."""
        found = set() if self.mock is not None else secret_values(self.config.extra)
        if self.api_key is not None:
            found.add(self.api_key)
        return frozenset(found)


def check_lm(config: LmConfig, prefix: str = "",
             allowed_env: Sequence[str] = DEFAULT_API_KEY_ENV_ALLOW) -> CheckedLm:
    """Validate what pydantic cannot (cross-field rules, the mock's options) and read the
    key from the environment when asked, if the operator allows that variable. Nothing
    is held as a secret here: the engine's LM object holds its secrets while it lives."""
    def at(name: str) -> str:
        return f"{prefix}.{name}" if prefix else name

    if config.is_mock:
        if not MOCK_PATTERN.match(config.model):
            raise invalid_field(at("model"), "a mock model is `mock` or `mock/<name>` "
                                "(letters, digits, `_.-:`)")
    elif not MODEL_PATTERN.match(config.model):
        raise invalid_field(at("model"), "must be DSPy's `provider/model` string (e.g. "
                            "`openai/gpt-4o-mini`) or `mock`/`mock/<name>`")
    if config.api_key is not None and config.api_key_env is not None:
        raise invalid_field(at("api_key_env"), "give either api_key or api_key_env, not both")
    api_key = config.api_key
    if config.api_key_env is not None:
        if not any(fnmatch.fnmatchcase(config.api_key_env, glob) for glob in allowed_env):
            raise invalid_field(
                at("api_key_env"),
                f"the worker's operator does not allow keys from {config.api_key_env}; "
                f"allowed: {', '.join(allowed_env)} (--api-key-env-allow)",
            )
        api_key = os.environ.get(config.api_key_env)
        if not api_key:
            raise invalid_field(
                at("api_key_env"),
                f"the environment variable {config.api_key_env} is not set in the worker",
            )
    mock: MockOptions | None = None
    extra: dict[str, Any] = {}
    top_level = {name: getattr(config, name) for name in MOCK_OPTION_NAMES
                 if getattr(config, name) is not None}
    if top_level and not config.is_mock:
        raise invalid_field(at(next(iter(top_level))), "an option of the mock provider only")
    if config.is_mock:
        if config.api_base is not None:
            raise invalid_field(at("api_base"), "the mock provider takes no api_base")
        clash = set(top_level) & set(config.extra or {})
        if clash:
            raise invalid_field(at(f"extra.{sorted(clash)[0]}"),
                                "given both here and at the top level")
        if top_level:
            config = config.model_copy(update={"extra": {**(config.extra or {}), **top_level},
                                               **dict.fromkeys(top_level)})
        try:
            mock = MockOptions.model_validate(config.extra or {})
        except ValidationError as exc:
            raise invalid_from(exc, at("extra")) from None
    else:
        extra = dict(config.extra or {})
        for key, value in extra.items():
            if key in EXTRA_RESERVED:
                raise invalid_field(
                    at(f"extra.{key}"),
                    "not allowed in extra (use the first-class setting if there is one)",
                )
            if key == "engine" and value not in EXTRA_ENGINES:
                raise invalid_field(at("extra.engine"),
                                    f"must be one of {', '.join(EXTRA_ENGINES)}")
            if key == "model_type" and value not in EXTRA_MODEL_TYPES:
                raise invalid_field(at("extra.model_type"),
                                    f"must be one of {', '.join(EXTRA_MODEL_TYPES)}")
    breaker = BreakerSettings()
    if config.circuit_breaker is not None:
        breaker = BreakerSettings(config.circuit_breaker.failure_threshold,
                                  config.circuit_breaker.cooldown_ms / 1000)
    stripped = config.model_copy(update={"api_key": None}) if config.api_key else config
    return CheckedLm(stripped, api_key, mock, extra, breaker)
