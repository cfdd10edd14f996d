"""Everything the bridge asks of DSPy: LMs, programs, execution, state, cache.

Isolation between requests rests on three per-call pieces, none of them process-global:
`dspy.context(lm=...)` (a contextvar) chooses the LM; a `CallScope` contextvar (`scope`)
partitions the response cache by session and LM config and collects the call's LM
history entries; a fresh `UsageTracker` in that context counts its tokens. Provider
failures and hostile answers become typed errors in `errors`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import hashlib
import inspect
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import dspy
from dspy.utils.usage_tracker import UsageTracker

from dspy_bridge.domain.breakers import BreakerSettings
from dspy_bridge.domain.limits import CacheLimits
from dspy_bridge.domain.redaction import book, scrub
from dspy_bridge.domain.signatures import annotation_of
from dspy_bridge.domain.usage import ModelUsage
from dspy_bridge.engine.errors import (
    check_outputs,
    invalid_output,
    parse_error,
    provider_error,
    truncate,
)
from dspy_bridge.engine.mock import AsyncMockEngine, MockEngine
from dspy_bridge.engine.scope import SCOPE, BridgeCache, CallScope
from dspy_bridge.protocol import codec
from dspy_bridge.protocol.errors import BridgeError, ErrorType, invalid_field

if TYPE_CHECKING:
    from dspy_bridge.domain.lm import CheckedLm
    from dspy_bridge.domain.signatures import SignatureSpec



# ----- handles -----


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


@dataclass(frozen=True)
class ProgramType:
    name: str
    build: Callable[[Any], Any]
    # Output fields the module adds to the signature's own (chain_of_thought: reasoning).
    extra_outputs: tuple[str, ...] = ()


# Adding a program type is adding an entry.
PROGRAM_TYPES: dict[str, ProgramType] = {
    "predict": ProgramType("predict", dspy.Predict),
    "chain_of_thought": ProgramType("chain_of_thought", dspy.ChainOfThought, ("reasoning",)),
}


@dataclass(eq=False)
class ProgramHandle:
    program_id: str
    session_id: str
    program_type: str
    spec: SignatureSpec
    module: Any  # dspy.Module
    lm: LmHandle | None
    output_names: list[str]
    # msgpack bytes of what it stores (signature, demos or state, LM config).
    stored_bytes: int = 0
    created_at: float = field(default_factory=time.time)

    def _first_predictor(self) -> Any:
        return self.module.named_predictors()[0][1]

    def demos(self) -> list[Any]:
        return list(self._first_predictor().demos)

    def instructions(self) -> str:
        return str(self._first_predictor().signature.instructions)


# ----- wire conversion -----


def to_wire(value: Any) -> Any:
    """A prediction value as msgpack carries it."""
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return value
    if isinstance(value, list | tuple | set | frozenset):
        return [to_wire(item) for item in value]
    if isinstance(value, dict):
        return {str(key): to_wire(item) for key, item in value.items()}
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return to_wire(dump(mode="json"))
    return str(value)


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


@functools.cache
def call_parameter_names(program_type: ProgramType) -> frozenset[str]:
    """Names an input or demo field cannot have: the named parameters of every function
    DSPy passes a program's fields through as keyword arguments (`self`, the callback
    wrapper's `instance`, `Example`'s `base`, ...). Read from DSPy itself, so a parameter
    added by an upgrade is refused too (tests/test_engine_runtime.py guards the known ones)."""
    template = program_type.build(dspy.Signature("bridge_in -> bridge_out"))
    functions: list[Any] = [dspy.Example.__init__]
    owners = (template, *(predictor for _, predictor in template.named_predictors()))
    for cls in {cls for owner in owners for cls in type(owner).__mro__}:  # super() calls too
        for attribute in ("__call__", "acall", "forward", "aforward", "_forward_preprocess"):
            function = cls.__dict__.get(attribute)
            while function is not None:  # each layer of decorators has its own parameters
                functions.append(function)
                function = getattr(function, "__wrapped__", None)
    named = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD,
             inspect.Parameter.KEYWORD_ONLY)
    return frozenset(
        parameter.name
        for function in functions
        for parameter in inspect.signature(function, follow_wrapped=False).parameters.values()
        if parameter.kind in named
    )


# ----- the engine -----


class Engine:
    dspy_version: str = dspy.__version__

    def __init__(self) -> None:
        self.limits = CacheLimits()
        self.cache_settings = self._defaults()
        self._install_cache(self.cache_settings)
        self._litellm: concurrent.futures.Future[Any] | None = None

    def _defaults(self) -> dict[str, Any]:
        return {
            "enable_memory": True,
            "enable_disk": False,
            "disk_dir": None,
            "memory_max_entries": self.limits.max_entries,
            "memory_max_bytes": self.limits.max_bytes,
            "disk_size_limit_bytes": self.limits.max_disk_bytes,
        }

    def start(self, limits: CacheLimits) -> None:
        """Take the operator's bounds (the worker calls this once the engine loaded)."""
        self.limits = limits
        self.cache_settings = self._defaults()
        self._install_cache(self.cache_settings)

    # ----- LMs -----

    async def lm(self, checked: CheckedLm, field_name: str = "model") -> LmHandle:
        """Build an LM, first loading litellm off the event loop when it may be used
        (its import takes seconds: never on the loop, where it would stall every request)."""
        if checked.mock is None:
            loading = self._load_litellm()
            if checked.extra.get("engine") == "litellm":
                await asyncio.wrap_future(loading)
        return self.build_lm(checked, field_name)

    def _load_litellm(self) -> concurrent.futures.Future[Any]:
        if self._litellm is None:
            self._litellm = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="litellm-import"
            ).submit(_import_litellm)
        return self._litellm

    def build_lm(self, checked: CheckedLm, field_name: str = "model") -> LmHandle:
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

    # ----- programs -----

    def program_type(self, name: str, field_name: str = "program_type") -> ProgramType:
        found = PROGRAM_TYPES.get(name)
        if found is None:
            raise invalid_field(field_name, f"unknown program type {name[:100]!r}; known: "
                                + ", ".join(PROGRAM_TYPES))
        return found

    def signature(self, spec: SignatureSpec, program_type: ProgramType) -> Any:
        fields: dict[str, Any] = {}
        for spec_field in spec.inputs:
            fields[spec_field.name] = self._field(spec_field, dspy.InputField)
        for spec_field in spec.outputs:
            fields[spec_field.name] = self._field(spec_field, dspy.OutputField)
        unusable = call_parameter_names(program_type)
        for name in fields:
            if name in unusable:
                raise invalid_field("signature", f"field name {name!r} cannot be used: DSPy "
                                    "calls programs through functions with a parameter of "
                                    "that name, so the field could never be passed")
            if name in program_type.extra_outputs:
                raise invalid_field("signature", f"field name {name!r} is used by the "
                                    f"{program_type.name} program type itself")
            if hasattr(dspy.Signature, name):
                raise invalid_field("signature", f"field name {name!r} is reserved by DSPy")
        return dspy.Signature(fields, spec.instructions or None, signature_name=spec.name
                              or "BridgeSignature")

    @staticmethod
    def _field(spec_field: Any, kind: Any) -> tuple[Any, Any]:
        info = kind(desc=spec_field.desc) if spec_field.desc else kind()
        return (annotation_of(spec_field.type), info)

    def build_program(self, program_id: str, session_id: str, spec: SignatureSpec,
                      type_name: str, lm: LmHandle | None, demos: list[dict[str, Any]],
                      state: dict[str, Any] | None) -> ProgramHandle:
        program_type = PROGRAM_TYPES[type_name]
        module = program_type.build(self.signature(spec, program_type))
        if state is not None:
            module.load_state(state)
        elif demos:
            for _, predictor in module.named_predictors():
                predictor.demos = [dspy.Example(**demo) for demo in demos]
        output_names = [*program_type.extra_outputs, *(f.name for f in spec.outputs)]
        stored = len(codec.pack([spec.to_wire(), demos, state])) + (lm.stored_bytes if lm else 0)
        return ProgramHandle(program_id, session_id, type_name, spec, module, lm, output_names,
                             stored)

    def export_state(self, program: ProgramHandle) -> dict[str, Any]:
        return to_wire(program.module.dump_state())  # type: ignore[no-any-return]

    def check_state(self, spec: SignatureSpec, program_type: ProgramType,
                    state: dict[str, Any]) -> dict[str, Any]:
        """A state document from the wire, reduced to what a program may take from it:
        demos, instructions and field prefixes/descriptions (never an LM, never any other
        attribute DSPy's load_state would set)."""
        template = program_type.build(self.signature(spec, program_type))
        predictors = dict(template.named_predictors())
        if list(predictors) == ["self"]:
            return self._check_predictor(state, predictors["self"], "document.state")
        unknown = set(state) - set(predictors)
        if unknown:
            raise invalid_field("document.state",
                                f"unexpected keys {sorted(unknown)!r}; this program "
                                f"type's state holds {sorted(predictors)!r}")
        return {name: self._check_predictor(state.get(name), predictor,
                                            f"document.state.{name}")
                for name, predictor in predictors.items()}

    @staticmethod
    def _check_predictor(raw: Any, predictor: Any, where: str) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise invalid_field(where, "must be a map (a predictor's state)")
        unknown = set(raw) - {"traces", "train", "demos", "signature", "lm", "fields"}
        if unknown:
            raise invalid_field(where, f"unexpected keys {sorted(unknown)!r}")
        if raw.get("lm") is not None:
            raise invalid_field(f"{where}.lm", "must be nil; a program's LM travels in document.lm")
        if raw.get("fields"):
            raise invalid_field(f"{where}.fields", "must be empty")
        names = set(predictor.signature.fields) | {"augmented"}
        demos = raw.get("demos", [])
        if not isinstance(demos, list) or not all(isinstance(d, dict) for d in demos):
            raise invalid_field(f"{where}.demos", "must be a list of maps")
        for index, demo in enumerate(demos):
            bad = [key for key in demo if not isinstance(key, str) or key not in names]
            if bad:
                raise invalid_field(f"{where}.demos.{index}", f"unknown fields {bad!r}")
        template = predictor.signature.dump_state()
        signature = raw.get("signature", template)
        if not isinstance(signature, dict) or set(signature) - {"instructions", "fields"}:
            raise invalid_field(f"{where}.signature", "must be {instructions, fields}")
        instructions = signature.get("instructions", template["instructions"])
        if not isinstance(instructions, str):
            raise invalid_field(f"{where}.signature.instructions", "must be a string")
        fields = signature.get("fields", template["fields"])
        if (not isinstance(fields, list) or len(fields) != len(template["fields"])
                or not all(isinstance(f, dict) and set(f) == {"prefix", "description"}
                           and all(isinstance(v, str) for v in f.values()) for f in fields)):
            raise invalid_field(
                f"{where}.signature.fields",
                f"must be {len(template['fields'])} maps of {{prefix, description}}",
            )
        return {"traces": [], "train": [], "demos": demos, "lm": None,
                "signature": {"instructions": instructions, "fields": fields}}

    # ----- execution -----

    async def execute(self, program: ProgramHandle, lm: LmHandle, inputs: dict[str, Any],
                      config: dict[str, Any],
                      record: Callable[[dict[str, ModelUsage]], None]) -> dict[str, Any]:
        scope = CallScope(partition=f"{program.session_id}\x1f{lm.fingerprint}")
        token = SCOPE.set(scope)
        tracker = UsageTracker()
        failed = False
        try:
            kwargs = dict(inputs)
            if config:
                kwargs["config"] = config
            with dspy.context(lm=lm.lm, adapter=None, usage_tracker=tracker,
                              track_usage=False, max_history_size=0, max_trace_size=0):
                if hasattr(program.module, "aforward"):
                    prediction = await program.module.acall(**kwargs)
                else:  # a module without an async path: a thread (the context goes with it)
                    prediction = await asyncio.to_thread(program.module, **kwargs)
            outputs = {name: to_wire(prediction.get(name)) for name in program.output_names}
            check_outputs(outputs, lm.model)
            return outputs
        except dspy.AdapterParseError as exc:
            raise parse_error(exc, lm.model, lm.checked.secrets) from None
        except RecursionError:
            # An answer nested so deeply that parsing or converting it blew the stack.
            raise invalid_output(lm.model, None, "is nested too deeply to parse") from None
        except dspy.LMError as exc:
            failed = True
            raise provider_error(exc, lm.model, lm.checked.secrets) from None
        finally:
            SCOPE.reset(token)
            record(self._usage(scope, tracker, lm.model, failed))

    @staticmethod
    def _usage(scope: CallScope, tracker: UsageTracker, model: str,
               failed: bool) -> dict[str, ModelUsage]:
        per_model: dict[str, ModelUsage] = {}
        for entry in scope.entries:
            usage = per_model.setdefault(str(entry.get("model", model)), ModelUsage())
            usage.requests += 1
            cost = entry.get("cost")
            if entry.get("usage") and isinstance(cost, int | float):
                usage.cost_usd = (usage.cost_usd or 0.0) + float(cost)
        for name, tokens in tracker.get_total_tokens().items():
            usage = per_model.setdefault(str(name), ModelUsage())
            usage.prompt_tokens += int(tokens.get("prompt_tokens") or 0)
            usage.completion_tokens += int(tokens.get("completion_tokens") or 0)
            usage.total_tokens += int(tokens.get("total_tokens") or 0)
        if scope.cache_hits:
            per_model.setdefault(model, ModelUsage()).cached_requests += scope.cache_hits
        if failed:
            usage = per_model.setdefault(model, ModelUsage())
            usage.errors += 1
            usage.requests += 1
        return per_model

    # ----- cache -----

    def configure_cache(self, **changes: Any) -> dict[str, Any]:
        settings = {**self.cache_settings, **changes}
        self._check_cache_settings(settings)
        try:
            self._install_cache(settings)
        except (OSError, ValueError) as exc:
            raise invalid_field("disk_dir", f"the disk cache could not be opened: {exc}") from None
        self.cache_settings = settings
        return dict(settings)

    def _check_cache_settings(self, settings: dict[str, Any]) -> None:
        """Callers choose within the operator's bounds: sizes up to the flags, a disk
        cache only inside --disk-cache-root (resolved, so `..` and symlinks cannot leave)."""
        for name, limit, flag in (
            ("memory_max_entries", self.limits.max_entries, "max_cache_entries"),
            ("memory_max_bytes", self.limits.max_bytes, "max_cache_bytes"),
            ("disk_size_limit_bytes", self.limits.max_disk_bytes, "max_disk_cache_bytes"),
        ):
            if settings[name] > limit:
                raise BridgeError(
                    ErrorType.LIMIT_EXCEEDED,
                    f"{name} {settings[name]} is over the operator's limit of {limit}",
                    retryable=False,
                    details={"limit": flag, flag: limit, "field": name},
                )
        if not settings["enable_disk"]:
            settings["disk_dir"] = None
            return
        root = self.limits.disk_root
        if root is None:
            raise invalid_field("enable_disk", "this worker's operator allows no disk cache "
                                "(start it with --disk-cache-root DIR)")
        real_root = os.path.realpath(root)
        directory = os.path.realpath(settings["disk_dir"] or root)
        if os.path.commonpath([real_root, directory]) != real_root:
            raise invalid_field("disk_dir", f"must be inside {root} (--disk-cache-root)")
        settings["disk_dir"] = directory

    @staticmethod
    def _install_cache(settings: dict[str, Any]) -> None:
        disk_dir = settings["disk_dir"]
        if settings["enable_disk"]:
            os.makedirs(disk_dir, exist_ok=True)
        cache = BridgeCache(
            enable_disk_cache=settings["enable_disk"],
            enable_memory_cache=settings["enable_memory"],
            disk_cache_dir=disk_dir,
            disk_size_limit_bytes=settings["disk_size_limit_bytes"],
            memory_max_entries=settings["memory_max_entries"],
            memory_max_bytes=settings["memory_max_bytes"],
        )
        with dspy._cache_lock:
            dspy.cache = cache


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


def _import_litellm() -> Any:
    from dspy.clients._litellm import get_litellm

    litellm = get_litellm(feature="dspy.LM")
    install_log_redaction(*LITELLM_LOGGERS)
    for name in LITELLM_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    return litellm
