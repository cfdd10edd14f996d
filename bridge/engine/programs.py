"""Programs: their types, the DSPy signature built from a spec, handles, and state.

A program is a DSPy module (`PROGRAM_TYPES`: predict, chain_of_thought, react, best_of_n,
refine) over a signature built from a checked `SignatureSpec`, with its type's checked
options, optionally with demos or a state document; a state document from the wire is
first reduced to what a program may take from it.
"""

from __future__ import annotations

import copy
import functools
import inspect
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import dspy

from dspy_bridge.domain.host import HostFunction
from dspy_bridge.engine.custom import build_custom
from dspy_bridge.engine.lm import LmHandle
from dspy_bridge.engine.tools import host_tool, reward_function
from dspy_bridge.engine.types import annotation, dspy_values
from dspy_bridge.protocol import codec
from dspy_bridge.protocol.errors import invalid_field

if TYPE_CHECKING:
    from dspy_bridge.domain.signatures import SignatureSpec


# ----- program types and handles -----


@dataclass(frozen=True, eq=False)  # one per type: hashed by identity (functools.cache)
class ProgramType:
    name: str
    # (signature, checked options, the session's host functions) -> a DSPy module
    build: Callable[[Any, Mapping[str, Any], Mapping[str, HostFunction]], Any]
    # Output fields the module adds to the signature's own (chain_of_thought: reasoning).
    extra_outputs: tuple[str, ...] = ()
    # Field names the module uses itself, so a signature cannot.
    reserved: tuple[str, ...] = ()
    takes_demos: bool = True
    # Options a template of the type is built with (to read DSPy's parameter names).
    template_options: Mapping[str, Any] = field(default_factory=dict)
    # The operator's own module class (`--modules`): the signature is then the call's
    # contract (inputs checked, outputs read), not given to DSPy.
    custom: bool = False

    def outputs_added(self, options: Mapping[str, Any]) -> tuple[str, ...]:
        """Output fields added for these options (best_of_n: its module's)."""
        if "module" in options:
            return PROGRAM_TYPES[options["module"]].extra_outputs
        return self.extra_outputs


def _plain(module: Callable[[Any], Any]) -> Callable[[Any, Any, Any], Any]:
    return lambda signature, options, tools: module(signature)


def _react(signature: Any, options: Mapping[str, Any], tools: Mapping[str, HostFunction]) -> Any:
    return dspy.ReAct(signature, [host_tool(tools[name]) for name in options["tools"]],
                      max_iters=options["max_iters"])


def _attempts(cls: Any) -> Callable[[Any, Any, Any], Any]:
    def build(signature: Any, options: Mapping[str, Any],
              tools: Mapping[str, HostFunction]) -> Any:
        inner_type = PROGRAM_TYPES[options["module"]]
        inner = inner_type.build(signature, {}, tools)
        outputs = [*inner_type.extra_outputs, *signature.output_fields]
        reward = reward_function(options["reward"], outputs, to_wire)
        return cls(module=inner, N=options["n"], reward_fn=reward,
                   threshold=options["threshold"], fail_count=options.get("fail_count"))

    return build


class PerCallFailCount:
    """BestOfN and Refine count `fail_count` down on the module itself, so failures add up
    over every call a shared program serves until it fails at once: each call counts on
    its own copy (tests/test_engine_fixes.py fails when DSPy stops doing this)."""

    def forward(self, **kwargs: Any) -> Any:
        call = copy.copy(self)
        return super(PerCallFailCount, call).forward(**kwargs)  # type: ignore[misc]


class BestOfN(PerCallFailCount, dspy.BestOfN):  # type: ignore[misc]
    pass


class Refine(PerCallFailCount, dspy.Refine):  # type: ignore[misc]
    pass


class CompareChains(dspy.Module):  # type: ignore[misc]
    """`multi_chain_comparison`: `m` chain-of-thought attempts (each its own rollout, at
    temperature 1.0, so the cache does not answer them alike), then DSPy's
    MultiChainComparison over them. Synchronous, as MultiChainComparison is: it runs in a
    thread that stops with its request."""

    def __init__(self, signature: Any, m: int) -> None:
        super().__init__()
        self.m = m
        self.attempt = dspy.ChainOfThought(signature)
        self.compare = dspy.MultiChainComparison(signature, M=m)

    def forward(self, **kwargs: Any) -> Any:
        completions = [self.attempt(**kwargs, config={"rollout_id": index, "temperature": 1.0})
                       for index in range(self.m)]
        return self.compare(completions=completions, **kwargs)


_TEMPLATE_ATTEMPTS = {"module": "predict", "n": 1, "threshold": 1.0,
                      "reward": {"metric": "exact_match", "expected": ""}}
_REACT_RESERVED = ("trajectory", "next_thought", "next_tool_name", "next_tool_args")

# Adding a program type is adding an entry (and its options in domain/program_options).
PROGRAM_TYPES: dict[str, ProgramType] = {
    "predict": ProgramType("predict", _plain(dspy.Predict)),
    "chain_of_thought": ProgramType("chain_of_thought", _plain(dspy.ChainOfThought),
                                    ("reasoning",)),
    "react": ProgramType("react", _react, ("reasoning",), _REACT_RESERVED, takes_demos=False,
                         template_options={"tools": [], "max_iters": 1}),
    "best_of_n": ProgramType("best_of_n", _attempts(BestOfN),
                             template_options=_TEMPLATE_ATTEMPTS),
    "refine": ProgramType("refine", _attempts(Refine), template_options=_TEMPLATE_ATTEMPTS),
    "multi_chain_comparison": ProgramType(
        "multi_chain_comparison",
        lambda signature, options, tools: CompareChains(signature, options["m"]),
        ("rationale",), ("reasoning",), template_options={"m": 2}),
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
    options: dict[str, Any] = field(default_factory=dict)
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


@functools.cache
def call_parameter_names(program_type: ProgramType) -> frozenset[str]:
    """Names an input or demo field cannot have: the named parameters of every function
    DSPy passes a program's fields through as keyword arguments (`self`, the callback
    wrapper's `instance`, `Example`'s `base`, ...). Read from DSPy itself, so a parameter
    added by an upgrade is refused too (tests/test_engine_runtime.py guards the known ones)."""
    template = program_type.build(dspy.Signature("bridge_in -> bridge_out"),
                                  program_type.template_options, {})
    functions: list[Any] = [dspy.Example.__init__]
    owners = [module for _, module in template.named_sub_modules()]  # itself included
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


# ----- building -----


def find_program_type(name: str, field_name: str = "program_type",
                      custom: Mapping[str, ProgramType] | None = None) -> ProgramType:
    found = PROGRAM_TYPES.get(name) or (custom or {}).get(name)
    if found is None:
        known = [*PROGRAM_TYPES, *(custom or {})]
        raise invalid_field(field_name, f"unknown program type {name[:200]!r}; known: "
                            + ", ".join(known))
    return found


def custom_program_type(name: str, cls: type) -> ProgramType:
    """The program type of an operator's module class: built with `options.init`."""
    return ProgramType(name, lambda signature, options, tools: build_custom(
        cls, options.get("init", {}), "init"), custom=True)


def build_signature(spec: SignatureSpec, program_type: ProgramType) -> Any:
    if program_type.custom:
        return None  # the module has its own signatures
    fields: dict[str, Any] = {}
    for spec_field in spec.inputs:
        fields[spec_field.name] = _field(spec_field, dspy.InputField)
    for spec_field in spec.outputs:
        fields[spec_field.name] = _field(spec_field, dspy.OutputField)
    unusable = call_parameter_names(program_type)
    for name in fields:
        if name in unusable:
            raise invalid_field("signature", f"field name {name!r} cannot be used: DSPy "
                                "calls programs through functions with a parameter of "
                                "that name, so the field could never be passed")
        if name in program_type.extra_outputs or name in program_type.reserved:
            raise invalid_field("signature", f"field name {name!r} is used by the "
                                f"{program_type.name} program type itself")
        if hasattr(dspy.Signature, name):
            raise invalid_field("signature", f"field name {name!r} is reserved by DSPy")
    return dspy.Signature(fields, spec.instructions or None, signature_name=spec.name
                          or "BridgeSignature")


def _field(spec_field: Any, kind: Any) -> tuple[Any, Any]:
    info = kind(desc=spec_field.desc) if spec_field.desc else kind()
    return (annotation(spec_field), info)


def build_program(program_id: str, session_id: str, spec: SignatureSpec,
                  program_type: ProgramType, lm: LmHandle | None, demos: list[dict[str, Any]],
                  state: dict[str, Any] | None, options: dict[str, Any],
                  tools: Mapping[str, HostFunction]) -> ProgramHandle:
    module = program_type.build(build_signature(spec, program_type), options, tools)
    if state is not None:
        module.load_state(state)
    elif demos:
        for _, predictor in module.named_predictors():
            predictor.demos = [dspy.Example(**dspy_values(spec, demo)) for demo in demos]
    output_names = [*program_type.outputs_added(options), *(f.name for f in spec.outputs)]
    stored = len(codec.pack([spec.to_wire(), demos, state, options])) + (
        lm.stored_bytes if lm else 0)
    return ProgramHandle(program_id, session_id, program_type.name, spec, module, lm,
                         output_names, options, stored)


def export_state(program: ProgramHandle) -> dict[str, Any]:
    return to_wire(program.module.dump_state())  # type: ignore[no-any-return]


# ----- state documents -----


def check_state(spec: SignatureSpec, program_type: ProgramType, state: dict[str, Any],
                options: dict[str, Any], tools: Mapping[str, HostFunction]) -> dict[str, Any]:
    """A state document from the wire, reduced to what a program may take from it:
    demos, instructions and field prefixes/descriptions (never an LM, never any other
    attribute DSPy's load_state would set)."""
    template = program_type.build(build_signature(spec, program_type), options, tools)
    predictors = dict(template.named_predictors())
    if list(predictors) == ["self"]:
        return _check_predictor(state, predictors["self"], "document.state")
    unknown = set(state) - set(predictors)
    if unknown:
        raise invalid_field("document.state",
                            f"unexpected keys {sorted(unknown)!r}; this program "
                            f"type's state holds {sorted(predictors)!r}")
    return {name: _check_predictor(state.get(name), predictor, f"document.state.{name}")
            for name, predictor in predictors.items()}


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
