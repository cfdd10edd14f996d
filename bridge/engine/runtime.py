"""The engine: the one object the command handlers ask of DSPy (`domain.engine_port`).

It holds the operator's cache limits and the cache settings in force, loads litellm off
the event loop, and runs programs. Building LMs is `lm`, building and checking programs
`programs`, the cache settings `cache`.

Isolation between requests rests on three per-call pieces, none of them process-global:
`dspy.context(lm=...)` (a contextvar) chooses the LM; a `CallScope` contextvar (`scope`)
partitions the response cache by session and LM config and collects the call's LM
history entries; a fresh `UsageTracker` in that context counts its tokens. Provider
failures and hostile answers become typed errors in `errors`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import dspy
from dspy.utils.usage_tracker import UsageTracker

import dspy_bridge.engine.fixes as fixes
from dspy_bridge.domain.engine_port import CompileOutcome, CompileRequest, Run
from dspy_bridge.domain.host import HostCaller, HostFunction
from dspy_bridge.domain.limits import CacheLimits
from dspy_bridge.domain.usage import ModelUsage
from dspy_bridge.engine.cache import (
    check_cache_settings,
    default_cache_settings,
    install_cache,
)
from dspy_bridge.engine.compiling import open_checkpoint, run_compile
from dspy_bridge.engine.custom import CustomCode, signature_document
from dspy_bridge.engine.errors import (
    check_outputs,
    history_entry,
    invalid_output,
    no_prediction,
    parse_error,
    provider_error,
)
from dspy_bridge.engine.lm import LmHandle, build_lm, import_litellm
from dspy_bridge.engine.metrics import Metric, check_metric
from dspy_bridge.engine.optimizers import CallStopped, stoppable, stopped_quietly
from dspy_bridge.engine.programs import (
    ProgramHandle,
    ProgramType,
    build_program,
    build_signature,
    check_state,
    custom_program_type,
    export_state,
    find_program_type,
    to_wire,
)
from dspy_bridge.engine.scope import SCOPE, SCOPE_SETTING, CallScope
from dspy_bridge.engine.streaming import StreamSink, streamed
from dspy_bridge.engine.tools import check_parameters, steps_of
from dspy_bridge.engine.types import dspy_values
from dspy_bridge.protocol.errors import invalid_field

if TYPE_CHECKING:
    from dspy_bridge.domain.lm import CheckedLm
    from dspy_bridge.domain.signatures import SignatureSpec


async def in_thread(work: Callable[[], Any], scope: CallScope) -> Any:
    """Synchronous DSPy work (a module without an async path, a compile) in a thread,
    with the caller's context (its scope, its request's log fields). Its LMs are
    `stoppable` on `scope.stop`: a cancelled request sets it, so the thread ends at its
    next LM call instead of spending calls nobody waits for; a failed reward sets it too,
    and the call answers that failure."""
    try:
        return await asyncio.to_thread(stopped_quietly(work))
    except asyncio.CancelledError:
        scope.stop.set()
        raise
    except CallStopped:
        if scope.host_failure is None:
            raise RuntimeError("a call's thread was stopped, and nothing says why") from None
        raise scope.host_failure.to_error() from None


def translate(exc: Exception, lm: LmHandle) -> Exception:
    """A DSPy failure as the typed error the host sees; anything else unchanged."""
    if isinstance(exc, dspy.AdapterParseError):
        return parse_error(exc, lm.model, lm.checked.secrets)
    if isinstance(exc, RecursionError):
        # An answer nested so deeply that parsing or converting it blew the stack.
        return invalid_output(lm.model, None, "is nested too deeply to parse")
    if isinstance(exc, dspy.LMError):
        return provider_error(exc, lm.model, lm.checked.secrets)
    return exc


class Engine:
    dspy_version: str = dspy.__version__

    def __init__(self) -> None:
        self.limits = CacheLimits()
        self.cache_settings = default_cache_settings(self.limits)
        install_cache(self.cache_settings)
        self._litellm: concurrent.futures.Future[Any] | None = None
        self.custom = CustomCode()
        self._custom_types: dict[str, ProgramType] = {}

    def start(self, limits: CacheLimits, modules: tuple[str, ...] = ()) -> None:
        """Take the operator's bounds and code (the worker calls this once the engine
        loaded; a listed module that cannot be imported fails the engine)."""
        self.limits = limits
        self.custom = CustomCode.load(modules)
        self._custom_types = {name: custom_program_type(name, cls)
                              for name, cls in self.custom.modules.items()}
        fixes.install()
        self.cache_settings = default_cache_settings(self.limits)
        install_cache(self.cache_settings)

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
            ).submit(import_litellm)
        return self._litellm

    def build_lm(self, checked: CheckedLm, field_name: str = "model") -> LmHandle:
        return build_lm(checked, field_name)

    # ----- programs -----

    def program_type(self, name: str, field_name: str = "program_type") -> ProgramType:
        return find_program_type(name, field_name, self._custom_types)

    def signature_class(self, name: str, field_name: str) -> dict[str, Any]:
        """An operator's `dspy.Signature` class, in the structured signature form."""
        return signature_document(self.custom, name, field_name)

    def signature(self, spec: SignatureSpec, program_type: ProgramType) -> Any:
        return build_signature(spec, program_type)

    def build_program(self, program_id: str, session_id: str, spec: SignatureSpec,
                      type_name: str, lm: LmHandle | None, demos: list[dict[str, Any]],
                      state: dict[str, Any] | None, options: dict[str, Any],
                      tools: Mapping[str, HostFunction]) -> ProgramHandle:
        return build_program(program_id, session_id, spec, self.program_type(type_name), lm,
                             demos, state, options, tools)

    def export_state(self, program: ProgramHandle) -> dict[str, Any]:
        return export_state(program)

    def check_state(self, spec: SignatureSpec, program_type: ProgramType,
                    state: dict[str, Any], options: dict[str, Any],
                    tools: Mapping[str, HostFunction]) -> dict[str, Any]:
        return check_state(spec, program_type, state, options, tools)

    def check_tool_parameters(self, schema: dict[str, Any], field_name: str) -> None:
        check_parameters(schema, field_name)

    # ----- execution -----

    async def execute(self, program: ProgramHandle, lm: LmHandle, inputs: dict[str, Any],
                      config: dict[str, Any],
                      record: Callable[[dict[str, ModelUsage]], None],
                      host: HostCaller | None = None,
                      expected: dict[str, Any] | None = None,
                      on_stream: StreamSink | None = None) -> Run:
        scope = CallScope(partition=f"{program.session_id}\x1f{lm.fingerprint}", host=host,
                          expected=expected or {})
        token = SCOPE.set(scope)
        tracker = UsageTracker()
        failed = False
        try:
            run = await self._run(program, lm, inputs, config, tracker, scope, on_stream)
        except Exception as exc:  # noqa: BLE001 - translated, or re-raised as it is
            failed = isinstance(exc, dspy.LMError)
            if scope.host_failure is not None:  # a reward or generator failed: the cause
                raise scope.host_failure.to_error() from None
            raise translate(exc, lm) from None
        else:
            if scope.host_failure is not None:  # DSPy carried on past it
                raise scope.host_failure.to_error()
            return dataclasses.replace(
                run, history=[history_entry(entry, lm) for entry in scope.entries])
        finally:
            SCOPE.reset(token)
            record(self._usage(scope, tracker, lm.model, failed))

    async def _run(self, program: ProgramHandle, lm: LmHandle, inputs: dict[str, Any],
                   config: dict[str, Any], tracker: UsageTracker, scope: CallScope,
                   on_stream: StreamSink | None) -> Run:
        kwargs = dspy_values(program.spec, inputs)  # images and histories as DSPy's objects
        if config:
            kwargs["config"] = config
        threaded = not hasattr(program.module, "aforward")  # then it runs in a thread
        call_lm = stoppable(lm.lm, scope.stop) if threaded else lm.lm
        with dspy.context(lm=call_lm, adapter=None, usage_tracker=tracker,
                          track_usage=False, max_history_size=0, max_trace_size=0,
                          **{SCOPE_SETTING: scope}):
            if on_stream is not None:
                prediction = await streamed(program, kwargs, on_stream)
            elif not threaded:
                prediction = await program.module.acall(**kwargs)
            else:
                prediction = await in_thread(functools.partial(program.module, **kwargs),
                                             scope)
        if prediction is None:  # BestOfN and Refine, when every attempt failed
            raise no_prediction(program.program_type, lm.model)
        outputs = {name: to_wire(prediction.get(name)) for name in program.output_names}
        check_outputs(outputs, lm.model)
        trajectory = prediction.get("trajectory")
        return Run(outputs, None if trajectory is None else to_wire(steps_of(trajectory)))

    # ----- compiling -----

    async def compile(self, program: ProgramHandle, lm: LmHandle, request: CompileRequest,
                      record: Callable[[dict[str, ModelUsage]], None],
                      host: HostCaller | None) -> CompileOutcome:
        """Run an optimizer over the program (a copy: the program itself is untouched) in
        a thread; the compiled program's state, and its score before and after."""
        scope = CallScope(partition=f"{program.session_id}\x1f{lm.fingerprint}", host=host,
                          checkpoint=open_checkpoint(request.checkpoint_dir))
        token = SCOPE.set(scope)
        failed = False
        try:
            work = functools.partial(run_compile, program, stoppable(lm.lm, scope.stop),
                                     request, scope)
            return await in_thread(work, scope)  # type: ignore[no-any-return]
        except Exception as exc:  # noqa: BLE001 - translated, or re-raised as it is
            failed = isinstance(exc, dspy.LMError)
            if scope.host_failure is not None:
                raise scope.host_failure.to_error() from None
            raise translate(exc, lm) from None
        finally:
            SCOPE.reset(token)
            if scope.checkpoint is not None:
                scope.checkpoint.close()
            record(self._usage(scope, None, lm.model, failed))

    @staticmethod
    def _usage(scope: CallScope, tracker: UsageTracker | None, model: str,
               failed: bool) -> dict[str, ModelUsage]:
        """A call's usage: requests and cost from its history entries; tokens from its
        tracker, or (None: DSPy's pool threads track on copies of it) from the entries."""
        per_model: dict[str, ModelUsage] = {}
        entry_tokens: dict[str, dict[str, int]] = {}
        for entry in scope.entries:
            name = str(entry.get("model", model))
            usage = per_model.setdefault(name, ModelUsage())
            usage.requests += 1
            cost = entry.get("cost")
            if entry.get("usage") and isinstance(cost, int | float):
                usage.cost_usd = (usage.cost_usd or 0.0) + float(cost)
            counted = entry_tokens.setdefault(name, {})
            for kind, value in (entry.get("usage") or {}).items():
                if isinstance(value, int) and not isinstance(value, bool):
                    counted[kind] = counted.get(kind, 0) + value
        totals = entry_tokens if tracker is None else tracker.get_total_tokens()
        for name, tokens in totals.items():
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

    def metric(
        self, spec: str | dict[str, Any], default_field: str, outputs: list[str]
    ) -> Metric:
        return check_metric(spec, default_field, outputs)

    def configure_cache(self, **changes: Any) -> dict[str, Any]:
        settings = {**self.cache_settings, **changes}
        check_cache_settings(settings, self.limits)
        try:
            install_cache(settings)
        except (OSError, ValueError) as exc:
            raise invalid_field("disk_dir", f"the disk cache could not be opened: {exc}") from None
        self.cache_settings = settings
        return dict(settings)
