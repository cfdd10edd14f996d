"""The operator's own DSPy code (`--modules`): the `dspy.Module` classes defined in the
modules the operator listed, creatable by name (`module:Class`), and their
`dspy.Signature` classes, registrable as named signatures.

Nothing on the wire names code: a program type or signature class is looked up in
this table, built from the listed modules at start, and anything else is refused.
Constructor arguments (`init`) are data, given to the class as keyword arguments.
"""

from __future__ import annotations

import importlib
import inspect
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import dspy

from dspy_bridge.protocol.errors import invalid_field


@dataclass
class CustomCode:
    modules: dict[str, type] = field(default_factory=dict)
    signatures: dict[str, type] = field(default_factory=dict)

    @classmethod
    def load(cls, names: tuple[str, ...]) -> CustomCode:
        """Import every listed module (an ImportError fails the engine's start: the
        operator's configuration is wrong) and collect the classes it defines."""
        code = cls()
        for name in names:
            module = importlib.import_module(name)
            for attribute, value in vars(module).items():
                if not inspect.isclass(value) or value.__module__ != name:
                    continue  # imported into it, not defined there
                if issubclass(value, dspy.Signature) and value is not dspy.Signature:
                    code.signatures[f"{name}:{attribute}"] = value
                elif issubclass(value, dspy.Module):
                    code.modules[f"{name}:{attribute}"] = value
        return code



def signature_document(code: CustomCode, name: str, where: str) -> dict[str, Any]:
    """An operator's `dspy.Signature` class as the wire's structured signature form (then
    checked like any other): its fields, their descriptions and types, its docstring."""
    cls: Any = code.signatures.get(name)
    if cls is None:
        raise invalid_field(where, f"no signature class {name[:200]!r} in the worker's "
                            "--modules; known: " + (", ".join(code.signatures) or "none"))

    def fields(declared: dict[str, Any]) -> list[dict[str, Any]]:
        described = []
        for field_name, info in declared.items():
            desc = (info.json_schema_extra or {}).get("desc")
            if desc == f"${{{field_name}}}":  # DSPy's placeholder for "no description"
                desc = None
            described.append({"name": field_name, "desc": desc, "type": type_text(
                info.annotation, f"{where}: field {field_name!r}")})
        return described

    return {"name": cls.__name__, "instructions": cls.instructions or None,
            "inputs": fields(cls.input_fields), "outputs": fields(cls.output_fields)}


def type_text(annotation: Any, what: str) -> str:
    """A Python annotation as the wire's type text (which the bridge then reads with its
    own grammar, never evaluating it)."""
    if annotation in (str, int, float, bool):
        return str(annotation.__name__)
    if annotation is dict:
        return "dict"
    if annotation is dspy.Image:
        return "dspy.Image"
    if annotation is dspy.History:
        return "dspy.History"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is list and len(args) == 1:
        return f"list[{type_text(args[0], what)}]"
    if origin is dict and len(args) == 2 and args[0] is str:
        return "dict" if args[1] is Any else f"dict[str, {type_text(args[1], what)}]"
    if origin in (typing.Union, types.UnionType) and len(args) == 2 and type(None) in args:
        inner = next(arg for arg in args if arg is not type(None))
        return f"Optional[{type_text(inner, what)}]"
    if origin is typing.Literal and all(isinstance(a, str | int) for a in args):
        return "Literal[" + ", ".join(json.dumps(arg) for arg in args) + "]"
    raise invalid_field(what.split(":")[0], f"{what} has a type the wire cannot carry: "
                        f"{annotation!r:.200}")


def build_custom(cls: type, init: dict[str, Any], field_name: str = "init") -> Any:
    """An instance of the operator's module class; a constructor that refuses `init`
    is invalid_args (its own message), never internal."""
    try:
        return cls(**init)
    except (TypeError, ValueError) as exc:
        raise invalid_field(field_name, f"{cls.__name__} refused these arguments: "
                            f"{exc}"[:500]) from None
