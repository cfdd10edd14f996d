"""The engine port: everything the bridge asks of DSPy, as Protocols.

The command handlers are written against these; `bridge.engine` (the only package that
imports DSPy) implements them. Nothing here imports the engine, so handlers and the
session store work, and are tested, without DSPy loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from dspy_bridge.domain.breakers import BreakerSettings
from dspy_bridge.domain.host import HostCaller, HostFunction
from dspy_bridge.domain.lm import CheckedLm
from dspy_bridge.domain.signatures import SignatureSpec
from dspy_bridge.domain.usage import ModelUsage


@dataclass(frozen=True, slots=True)
class Run:
    """One call of a program: its outputs, and a ReAct program's trajectory (steps)."""

    outputs: dict[str, Any]
    trajectory: list[dict[str, Any]] | None = None
    # The call's LM calls as get_history shows them (scrubbed, cut to length).
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class CompileRequest:
    """What compile_program asks of the engine, checked: the optimizer and its options,
    the examples (wire maps), the metric, and where progress goes (`report(done, total,
    score)`, callable from any thread)."""

    optimizer: str
    options: Any
    trainset: list[dict[str, Any]]
    valset: list[dict[str, Any]] | None
    metric: MetricHandle
    input_names: list[str]
    report: Callable[[int, int, float | None], None]
    prompt_lm: LmHandle | None = None
    checkpoint_dir: str | None = None


@dataclass(frozen=True, slots=True)
class CompileOutcome:
    """A compile's result: the compiled program's DSPy state, its scores on the valset
    before and after (None without one), and how many metric evaluations it took."""

    state: dict[str, Any]
    score_before: float | None
    score_after: float | None
    metric_calls: int


class LmHandle(Protocol):
    """A built LM (for DSPy: a `dspy.LM`) and the checked config it came from."""

    @property
    def checked(self) -> CheckedLm: ...

    @property
    def model(self) -> str: ...

    @property
    def fingerprint(self) -> str: ...

    @property
    def stored_bytes(self) -> int: ...

    @property
    def breaker_settings(self) -> BreakerSettings: ...


class ProgramType(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def extra_outputs(self) -> tuple[str, ...]: ...

    @property
    def takes_demos(self) -> bool: ...

    def outputs_added(self, options: Mapping[str, Any]) -> tuple[str, ...]: ...


class ProgramHandle(Protocol):
    """A built program (for DSPy: a module) with what the bridge knows of it."""

    @property
    def program_id(self) -> str: ...

    @property
    def session_id(self) -> str: ...

    @property
    def program_type(self) -> str: ...

    @property
    def spec(self) -> SignatureSpec: ...

    @property
    def lm(self) -> LmHandle | None: ...

    @property
    def options(self) -> dict[str, Any]: ...

    @property
    def created_at(self) -> float: ...

    @property
    def stored_bytes(self) -> int: ...

    def demos(self) -> list[Any]: ...

    def instructions(self) -> str: ...


class MetricHandle(Protocol):
    """A checked metric of evaluate_program: scores one output field in [0, 1]."""

    @property
    def name(self) -> str: ...

    @property
    def field(self) -> str: ...

    @property
    def threshold(self) -> float: ...

    @property
    def function(self) -> str | None: ...

    def score(self, predicted: Any, expected: Any) -> float: ...


class Engine(Protocol):
    dspy_version: str

    async def lm(self, checked: CheckedLm, field_name: str = "model") -> LmHandle: ...

    def program_type(self, name: str, field_name: str = "program_type") -> ProgramType: ...

    def signature(self, spec: SignatureSpec, program_type: ProgramType) -> Any: ...

    def build_program(
        self,
        program_id: str,
        session_id: str,
        spec: SignatureSpec,
        type_name: str,
        lm: LmHandle | None,
        demos: list[dict[str, Any]],
        state: dict[str, Any] | None,
        options: dict[str, Any],
        tools: Mapping[str, HostFunction],
    ) -> ProgramHandle: ...

    def export_state(self, program: ProgramHandle) -> dict[str, Any]: ...

    def check_state(
        self,
        spec: SignatureSpec,
        program_type: ProgramType,
        state: dict[str, Any],
        options: dict[str, Any],
        tools: Mapping[str, HostFunction],
    ) -> dict[str, Any]: ...

    def check_tool_parameters(self, schema: dict[str, Any], field_name: str) -> None: ...

    def signature_class(self, name: str, field_name: str) -> dict[str, Any]: ...

    async def execute(
        self,
        program: ProgramHandle,
        lm: LmHandle,
        inputs: dict[str, Any],
        config: dict[str, Any],
        record: Callable[[dict[str, ModelUsage]], None],
        host: HostCaller | None = None,
        expected: dict[str, Any] | None = None,
        on_stream: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> Run: ...

    async def compile(
        self,
        program: ProgramHandle,
        lm: LmHandle,
        request: CompileRequest,
        record: Callable[[dict[str, ModelUsage]], None],
        host: HostCaller | None,
    ) -> CompileOutcome: ...

    def configure_cache(self, **changes: Any) -> dict[str, Any]: ...

    def metric(
        self, spec: str | dict[str, Any], default_field: str, outputs: list[str]
    ) -> MetricHandle: ...
