"""DSPy commands: LM configuration, program pools per session, execution, usage, cache.

The handlers validate everything from the wire here, without DSPy (so `ready` stays
fast and a bad request is refused before any DSPy code sees it), then await the engine
(`bridge.engine`, the one module that imports DSPy) for the work itself.
"""

from __future__ import annotations

import fnmatch
import keyword
import math
import os
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, cast

from pydantic import Field, ValidationError, field_validator, model_validator

from bridge.commands import Args, CommandTable, RequestContext
from bridge.options import DEFAULT_API_KEY_ENV_ALLOW
from bridge.redaction import REDACTED, redact, secret_values
from bridge.sessions import BreakerSettings, ModelUsage, Session, merge_usage
from protocol import codec
from protocol.envelope import validation_errors
from protocol.errors import BridgeError, ErrorType, invalid_field, invalid_fields

if TYPE_CHECKING:
    from bridge.engine.runtime import Engine, LmHandle, ProgramHandle

table = CommandTable(needs_engine=True)

SessionId = Annotated[str, Field(min_length=1, max_length=256)]
ProgramId = Annotated[str, Field(min_length=1, max_length=256)]
DOCUMENT_FORMAT = "dspy-bridge/program"
DOCUMENT_VERSION = 1


def invalid_from(exc: ValidationError, prefix: str) -> BridgeError:
    return invalid_fields([(f"{prefix}.{name}" if name != "(root)" else prefix, message)
                           for name, message in validation_errors(exc)])


# ===== LM configuration =====

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
MOCK_OPTION_NAMES = ("responses", "default", "sequence", "latency_ms", "fail")
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
        return bool(self.sequence) or self.fail is not None


class BreakerConfig(Args):
    failure_threshold: Annotated[int, Field(ge=1, le=1_000_000)] = 5
    cooldown_ms: Annotated[int, Field(ge=1, le=86_400_000)] = 30_000


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

    @model_validator(mode="before")
    @classmethod
    def _model_shorthand(cls, value: Any) -> Any:
        # `lm: "mock/x"` is short for `lm: {model: "mock/x"}`.
        return {"model": value} if isinstance(value, str) else value

    @field_validator("api_base")
    @classmethod
    def _http_base(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^\s]+$", value):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @property
    def is_mock(self) -> bool:
        return self.model == "mock" or self.model.startswith("mock/")


class ConfigureLmArgs(LmConfig):
    session_id: SessionId | None = None


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


# ===== signatures =====

SCALAR_TYPES = ("str", "int", "float", "bool", "list[str]", "list[int]", "list[float]", "dict")
IDENTIFIER = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
MAX_FIELDS = 64
MAX_SIGNATURE_CHARS = 20_000
# Keyword arguments DSPy's Predict takes for itself, and the ChatAdapter's end marker.
RESERVED_FIELDS = frozenset({"signature", "demos", "config", "lm", "new_signature",
                             "prediction", "completed", "instructions", "fields"})


def check_field_name(name: Any) -> str:
    if not isinstance(name, str) or not IDENTIFIER.match(name):
        raise ValueError("a field name must be an identifier: a letter, then letters, digits or "
                         "underscores (at most 64)")
    if keyword.iskeyword(name) or name in RESERVED_FIELDS or name.startswith("model_"):
        raise ValueError(f"{name!r} is a reserved name")
    return name


def check_type(value: Any) -> str | dict[str, Any]:
    """A wire type: one of the whitelisted names, or `{type: "enum", choices: [...]}`.

    Type text is compared with the whitelist after removing blanks; it is never evaluated.
    """
    if isinstance(value, str):
        name = re.sub(r"\s+", "", value)
        if name not in SCALAR_TYPES:
            shown = value if len(value) <= 60 else value[:60] + "..."
            raise ValueError(f"unsupported type {shown!r}; use one of {', '.join(SCALAR_TYPES)} "
                             "or {type: enum, choices: [...]}")
        return name
    if isinstance(value, dict):
        if set(value) != {"type", "choices"} or value.get("type") != "enum":
            raise ValueError("a structured type is {type: \"enum\", choices: [str, ...]}")
        choices = value["choices"]
        if (not isinstance(choices, list) or not 1 <= len(choices) <= 200
                or not all(isinstance(c, str) and 0 < len(c) <= 500 for c in choices)):
            raise ValueError("enum choices must be 1 to 200 non-empty strings")
        if len(set(choices)) != len(choices):
            raise ValueError("enum choices must be distinct")
        return {"type": "enum", "choices": list(choices)}
    raise ValueError("a type is a string (e.g. \"list[str]\") or {type: \"enum\", choices: [...]}")


class FieldSpec(Args):
    name: str
    desc: Annotated[str, Field(max_length=5000)] | None = None
    type: Any = "str"

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_field_name(value)

    @field_validator("type")
    @classmethod
    def _type(cls, value: Any) -> Any:
        return check_type(value)


class SignatureSpec(Args):
    name: Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,99}$")] | None = None
    instructions: Annotated[str, Field(max_length=50_000)] | None = None
    inputs: Annotated[list[FieldSpec], Field(max_length=MAX_FIELDS)] = Field(default_factory=list)
    outputs: Annotated[list[FieldSpec], Field(min_length=1, max_length=MAX_FIELDS)]

    @model_validator(mode="after")
    def _distinct(self) -> SignatureSpec:
        names = [f.name for f in (*self.inputs, *self.outputs)]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"field names must be distinct: {', '.join(duplicates)} repeated")
        return self

    def field_types(self) -> dict[str, Any]:
        return {f.name: f.type for f in (*self.inputs, *self.outputs)}

    def to_wire(self) -> dict[str, Any]:
        def one(f: FieldSpec) -> dict[str, Any]:
            return {"name": f.name, "desc": f.desc, "type": f.type}

        return {"name": self.name, "instructions": self.instructions,
                "inputs": [one(f) for f in self.inputs], "outputs": [one(f) for f in self.outputs]}


def split_top_level(text: str, separator: str = ",") -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char in "[(":
            depth += 1
        elif char in "])":
            depth -= 1
            if depth < 0:
                raise ValueError("unbalanced brackets")
        if char == separator and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth != 0:
        raise ValueError("unbalanced brackets")
    parts.append("".join(current))
    return parts


def parse_string_signature(text: str) -> SignatureSpec:
    """`"context: list[str], question -> answer: str"` into its structured form."""
    if len(text) > MAX_SIGNATURE_CHARS:
        raise ValueError(f"longer than {MAX_SIGNATURE_CHARS} characters")
    if text.count("->") != 1:
        raise ValueError("a string signature is `inputs -> outputs` with exactly one `->`")
    left, right = text.split("->")

    def side(part: str, what: str) -> list[dict[str, Any]]:
        if not part.strip():
            return []
        fields = []
        for item in split_top_level(part):
            name, colon, type_text = item.partition(":")
            name = name.strip()
            if not name:
                raise ValueError(f"an empty field name among the {what}")
            try:
                check_field_name(name)
                field_type = check_type(type_text.strip()) if colon else "str"
            except ValueError as exc:
                raise ValueError(f"{what} field {name[:60]!r}: {exc}") from None
            fields.append({"name": name, "type": field_type})
        return fields

    return SignatureSpec.model_validate(
        {"inputs": side(left, "input"), "outputs": side(right, "output")}
    )


def parse_signature(value: str | dict[str, Any], field: str = "signature") -> SignatureSpec:
    if isinstance(value, str):
        try:
            return parse_string_signature(value)
        except ValidationError as exc:
            raise invalid_from(exc, field) from None
        except ValueError as exc:
            raise invalid_field(field, str(exc)) from None
    try:
        return SignatureSpec.model_validate(value)
    except ValidationError as exc:
        raise invalid_from(exc, field) from None


def type_name(value: Any) -> str:
    return "nil" if value is None else type(value).__name__


def has_non_finite(value: Any) -> bool:
    """Whether a NaN or an infinity hides anywhere in the value (iteratively: the depth
    of wire values is bounded, but not small)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return True
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def check_value(value: Any, declared: Any) -> str | None:
    """Why `value` does not fit the declared wire type, or None if it does."""
    if has_non_finite(value):
        return "NaN and infinity are not accepted"
    if isinstance(declared, dict):
        return None if value in declared["choices"] else (
            f"must be one of {declared['choices']!r}")
    checks: dict[str, Callable[[Any], bool]] = {
        "str": lambda v: isinstance(v, str),
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "bool": lambda v: isinstance(v, bool),
        "list[str]": lambda v: isinstance(v, list) and all(isinstance(i, str) for i in v),
        "list[int]": lambda v: isinstance(v, list) and all(
            isinstance(i, int) and not isinstance(i, bool) for i in v),
        "list[float]": lambda v: isinstance(v, list) and all(
            isinstance(i, int | float) and not isinstance(i, bool) for i in v),
        "dict": lambda v: isinstance(v, dict),
    }
    return None if checks[declared](value) else f"expected {declared}, got {type_name(value)}"


def check_inputs(spec: SignatureSpec, inputs: dict[str, Any], field: str = "inputs") -> None:
    declared = {f.name: f.type for f in spec.inputs}
    errors = [(f"{field}.{name}", "missing input field") for name in declared if name not in inputs]
    errors += [(f"{field}.{name}", "unexpected input field; the signature's inputs are "
                + (", ".join(declared) or "(none)")) for name in inputs if name not in declared]
    for name, value in inputs.items():
        if name in declared and (problem := check_value(value, declared[name])):
            errors.append((f"{field}.{name}", problem))
    if errors:
        raise invalid_fields(errors)


def check_demos(spec: SignatureSpec, demos: list[dict[str, Any]], extra_fields: tuple[str, ...],
                field: str = "demos") -> None:
    types = spec.field_types()
    allowed = set(types) | set(extra_fields) | {"augmented"}
    errors = []
    for index, demo in enumerate(demos):
        for name, value in demo.items():
            if name not in allowed:
                errors.append((f"{field}.{index}.{name}", "not a field of the signature"))
            elif name in types and (problem := check_value(value, types[name])):
                errors.append((f"{field}.{index}.{name}", problem))
    if errors:
        raise invalid_fields(errors)


# ===== helpers =====


async def engine_of(ctx: RequestContext) -> Engine:
    module = await ctx.engine()
    return cast("Engine", module.ENGINE)


def check_optional_lm(
    ctx: RequestContext, config: LmConfig | None, prefix: str
) -> CheckedLm | None:
    if config is None:
        return None
    return check_lm(config, prefix, ctx.options.api_key_env_allow)


def program_not_found(session_id: str, program_id: str) -> BridgeError:
    return BridgeError(
        ErrorType.NOT_FOUND,
        f"no program {program_id!r} in session {session_id!r}",
        details={"session_id": session_id, "program_id": program_id},
    )


def find_program(ctx: RequestContext, session_id: str | None, program_id: str) -> ProgramHandle:
    store = ctx.sessions
    session = store.get(session_id)
    program = None if session is None else session.programs.get(program_id)
    if program is None:
        raise program_not_found(store.resolve_id(session_id), program_id)
    return cast("ProgramHandle", program)


def new_program_id(session: Session) -> str:
    while True:
        candidate = "prog_" + secrets.token_hex(6)
        if candidate not in session.programs:
            return candidate


def lm_summary(lm: LmHandle | None) -> dict[str, Any] | None:
    return None if lm is None else lm.checked.public()


def describe(program: ProgramHandle) -> dict[str, Any]:
    return {
        "program_id": program.program_id,
        "session_id": program.session_id,
        "program_type": program.program_type,
        "signature": program.spec.to_wire(),
        "lm": lm_summary(program.lm),
        "demos": len(program.demos()),
        "instructions": program.instructions(),
        "created_at": program.created_at,
    }


# ===== configure_lm =====


@table.command("configure_lm", ConfigureLmArgs)
async def configure_lm(ctx: RequestContext, args: ConfigureLmArgs) -> dict[str, Any]:
    config = LmConfig.model_validate(args.model_dump(exclude={"session_id"}, exclude_none=True))
    checked = check_lm(config, allowed_env=ctx.options.api_key_env_allow)
    engine = await engine_of(ctx)
    lm = await engine.lm(checked)
    store = ctx.sessions
    session = None if args.session_id is None else store.get_or_create(args.session_id)
    store.set_lm(session, lm)
    scope = "worker" if session is None else "session"
    return {"scope": scope, "session_id": args.session_id, "lm": checked.public()}


# ===== programs =====


def created_reply(
    program_id: str, session_id: str, program_type: str, spec: SignatureSpec
) -> dict[str, Any]:
    """What create_program and import_program answer."""
    return {
        "program_id": program_id,
        "session_id": session_id,
        "program_type": program_type,
        "signature": spec.to_wire(),
    }


class CreateProgramArgs(Args):
    session_id: SessionId | None = None
    program_id: ProgramId | None = None
    signature: Annotated[str, Field(min_length=1)] | dict[str, Any]
    program_type: Annotated[str, Field(min_length=1, max_length=100)] = "predict"
    lm: LmConfig | None = None
    demos: Annotated[list[dict[str, Any]], Field(max_length=10_000)] | None = None
    instructions: Annotated[str, Field(max_length=50_000)] | None = None


@table.command("create_program", CreateProgramArgs)
async def create_program(ctx: RequestContext, args: CreateProgramArgs) -> dict[str, Any]:
    spec = parse_signature(args.signature)
    if args.instructions is not None:
        spec = spec.model_copy(update={"instructions": args.instructions})
    checked = check_optional_lm(ctx, args.lm, "lm")
    engine = await engine_of(ctx)
    program_type = engine.program_type(args.program_type)
    check_demos(spec, args.demos or [], program_type.extra_outputs)
    engine.signature(spec, program_type)  # DSPy's own name rules, before anything is stored
    lm = await engine.lm(checked, "lm.model") if checked is not None else None
    # No await from here on: the id check and the insertion are one step.
    store = ctx.sessions
    session = store.get_or_create(args.session_id)
    if args.program_id is not None and args.program_id in session.programs:
        raise BridgeError(
            ErrorType.ALREADY_EXISTS,
            f"session {session.session_id!r} already has a program {args.program_id!r}",
            details={"session_id": session.session_id, "program_id": args.program_id},
        )
    program_id = args.program_id or new_program_id(session)
    program = engine.build_program(
        program_id, session.session_id, spec, program_type.name, lm, args.demos or [], None
    )
    store.add_program(session, program)
    return created_reply(program_id, session.session_id, program.program_type, spec)


class ProgramRef(Args):
    session_id: SessionId | None = None
    program_id: ProgramId


@table.command("get_program", ProgramRef)
async def get_program(ctx: RequestContext, args: ProgramRef) -> dict[str, Any]:
    return describe(find_program(ctx, args.session_id, args.program_id))


class SessionRef(Args):
    session_id: SessionId | None = None


@table.command("list_programs", SessionRef)
async def list_programs(ctx: RequestContext, args: SessionRef) -> dict[str, Any]:
    store = ctx.sessions
    session = store.get(args.session_id)
    programs = [] if session is None else [
        {"program_id": p.program_id, "program_type": p.program_type,
         "signature": p.spec.to_wire(), "created_at": p.created_at}
        for p in session.programs.values()
    ]
    return {"session_id": store.resolve_id(args.session_id), "programs": programs}


@table.command("delete_program", ProgramRef)
async def delete_program(ctx: RequestContext, args: ProgramRef) -> dict[str, Any]:
    program = find_program(ctx, args.session_id, args.program_id)
    store = ctx.sessions
    store.remove_program(store.require(args.session_id), program.program_id)
    return {"deleted": True, "session_id": program.session_id, "program_id": program.program_id}


# ===== execute_program =====


class CallConfig(Args):
    """Per-call LM settings; they override the LM's own for this call only."""

    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    max_tokens: Annotated[int, Field(gt=0, le=10_000_000)] | None = None
    stop: Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=16)] | None = None
    seed: int | None = None
    cache: bool | None = None
    rollout_id: Annotated[int, Field(ge=0)] | None = None


class ExecuteProgramArgs(Args):
    session_id: SessionId | None = None
    program_id: ProgramId
    inputs: dict[str, Any] = Field(default_factory=dict)
    lm: LmConfig | None = None
    config: CallConfig | None = None


@table.command("execute_program", ExecuteProgramArgs)
async def execute_program(ctx: RequestContext, args: ExecuteProgramArgs) -> dict[str, Any]:
    started = time.perf_counter()
    store = ctx.sessions
    program = find_program(ctx, args.session_id, args.program_id)
    session = store.require(args.session_id)
    limit = ctx.options.max_input_bytes
    size = len(codec.pack(args.inputs))
    if size > limit:
        raise BridgeError(
            ErrorType.LIMIT_EXCEEDED,
            f"the inputs take {size} bytes, over the limit of {limit}",
            details={"limit": "max_input_bytes", "max_input_bytes": limit, "size": size},
        )
    check_inputs(program.spec, args.inputs)
    override = check_optional_lm(ctx, args.lm, "lm")
    config = args.config.model_dump(exclude_none=True) if args.config else {}
    usage: dict[str, ModelUsage] = {}

    def record(per_model: dict[str, ModelUsage]) -> None:
        usage.update(per_model)
        session.usage.add(per_model)

    with store.using(session):  # from here on the session is never evicted under us
        engine = await engine_of(ctx)
        call_lm = await engine.lm(override, "lm.model") if override is not None else None
        lm, source = resolve_lm(call_lm, program, session, store.default_lm)
        breaker = store.breaker_for(lm)
        breaker.before_call(lm.model)
        try:
            outputs = await engine.execute(program, lm, args.inputs, config, record)
        except BridgeError as error:
            details = error.details or {}
            breaker.on_failure(retryable_provider_failure=error.type is ErrorType.LM_ERROR
                               and details.get("reason") == "provider_error" and error.retryable)
            raise
        except BaseException:
            breaker.on_abandoned()
            raise
        breaker.on_success()
    return {
        "outputs": outputs,
        "lm": lm.model,
        "lm_source": source,
        "usage": merge_usage(usage).to_wire(),
        "duration_ms": round((time.perf_counter() - started) * 1000, 3),
    }


def resolve_lm(call_lm: LmHandle | None, program: ProgramHandle,
               session: Session, default: Any) -> tuple[LmHandle, str]:
    """The call's `lm` > the program's > the session's > the worker default."""
    if call_lm is not None:
        return call_lm, "call"
    if program.lm is not None:
        return program.lm, "program"
    if session.lm is not None:
        return cast("LmHandle", session.lm), "session"
    if default is not None:
        return cast("LmHandle", default), "worker"
    raise BridgeError(
        ErrorType.LM_NOT_CONFIGURED,
        "no LM configured: pass `lm` with the call, create the program with one, or call "
        "configure_lm for this session or for the worker",
        details={"session_id": session.session_id, "program_id": program.program_id},
    )


# ===== sessions =====


@table.command("list_sessions", SessionRef)
async def list_sessions(ctx: RequestContext, args: SessionRef) -> dict[str, Any]:
    """Every session, or just the one named by `session_id` (none if it does not exist)."""
    sessions = ctx.sessions.sessions
    if args.session_id is not None:
        found = sessions.get(args.session_id)
        return {"sessions": [] if found is None else [found.to_wire()]}
    return {"sessions": [s.to_wire() for s in sessions.values()]}


@table.command("end_session", SessionRef)
async def end_session(ctx: RequestContext, args: SessionRef) -> dict[str, Any]:
    session = ctx.sessions.end(args.session_id)
    return {"ended": True, "session_id": session.session_id, "programs": len(session.programs)}


# ===== export / import =====


@table.command("export_program", ProgramRef)
async def export_program(ctx: RequestContext, args: ProgramRef) -> dict[str, Any]:
    program = find_program(ctx, args.session_id, args.program_id)
    engine = await engine_of(ctx)
    lm, omitted = (None, []) if program.lm is None else program.lm.checked.exportable()
    document: dict[str, Any] = {
        "format": DOCUMENT_FORMAT,
        "version": DOCUMENT_VERSION,
        "program_id": program.program_id,
        "program_type": program.program_type,
        "signature": program.spec.to_wire(),
        "lm": lm,
        "state": engine.export_state(program),
        "dspy_version": engine.dspy_version,
        "secrets_omitted": omitted,
    }
    return {"document": document}


class ProgramDocument(Args):
    format: Literal["dspy-bridge/program"]
    version: Literal[1]
    program_id: ProgramId | None = None
    program_type: Annotated[str, Field(min_length=1, max_length=100)]
    signature: dict[str, Any]
    lm: LmConfig | None = None
    state: dict[str, Any]
    dspy_version: str | None = None
    secrets_omitted: list[str] = Field(default_factory=list)


class ImportProgramArgs(Args):
    session_id: SessionId | None = None
    program_id: ProgramId | None = None
    document: dict[str, Any]


@table.command("import_program", ImportProgramArgs)
async def import_program(ctx: RequestContext, args: ImportProgramArgs) -> dict[str, Any]:
    try:
        document = ProgramDocument.model_validate(args.document)
    except ValidationError as exc:
        raise invalid_from(exc, "document") from None
    spec = parse_signature(document.signature, "document.signature")
    checked = check_optional_lm(ctx, document.lm, "document.lm")
    engine = await engine_of(ctx)
    program_type = engine.program_type(document.program_type, "document.program_type")
    state = engine.check_state(spec, program_type, document.state)
    lm = await engine.lm(checked, "document.lm.model") if checked is not None else None
    # No await from here on: the id check and the insertion are one step.
    store = ctx.sessions
    session = store.get_or_create(args.session_id)
    program_id = args.program_id or document.program_id or new_program_id(session)
    if program_id in session.programs:
        raise BridgeError(
            ErrorType.ALREADY_EXISTS,
            f"session {session.session_id!r} already has a program {program_id!r}",
            details={"session_id": session.session_id, "program_id": program_id},
        )
    program = engine.build_program(program_id, session.session_id, spec, program_type.name, lm,
                                   [], state)
    store.add_program(session, program)
    return created_reply(program_id, session.session_id, program.program_type, spec)


# ===== usage =====


@table.command("get_usage", SessionRef)
async def get_usage(ctx: RequestContext, args: SessionRef) -> dict[str, Any]:
    store = ctx.sessions
    session = store.get(args.session_id)
    usage = {"models": {}, "total": ModelUsage().to_wire(), "since": None} if session is None \
        else session.usage.to_wire()
    return {"session_id": store.resolve_id(args.session_id), **usage}


@table.command("reset_usage", SessionRef)
async def reset_usage(ctx: RequestContext, args: SessionRef) -> dict[str, Any]:
    store = ctx.sessions
    session = store.get(args.session_id)
    if session is not None:
        session.usage.reset()
    return {"session_id": store.resolve_id(args.session_id), "reset": True}


# ===== cache =====


class ConfigureCacheArgs(Args):
    # The cache is worker-wide (its keys are partitioned by session); a session_id is
    # accepted like on every DSPy command and changes nothing.
    session_id: SessionId | None = None
    enable_memory: bool | None = None
    enable_disk: bool | None = None
    disk_dir: Annotated[str, Field(min_length=1, max_length=4096)] | None = None
    memory_max_entries: Annotated[int, Field(gt=0)] | None = None
    memory_max_bytes: Annotated[int, Field(gt=0)] | None = None
    disk_size_limit_bytes: Annotated[int, Field(gt=0)] | None = None


@table.command("configure_cache", ConfigureCacheArgs)
async def configure_cache(ctx: RequestContext, args: ConfigureCacheArgs) -> dict[str, Any]:
    engine = await engine_of(ctx)
    return engine.configure_cache(**args.model_dump(exclude_none=True, exclude={"session_id"}))
