"""The operator's own DSPy code (`--modules`): the `dspy.Module` classes defined in the
modules the operator listed, creatable by name (`module:Class`).

Nothing on the wire names code: a program type or signature class is looked up in
this table, built from the listed modules at start, and anything else is refused.
Constructor arguments (`init`) are data, given to the class as keyword arguments.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any

import dspy

from dspy_bridge.protocol.errors import invalid_field


@dataclass
class CustomCode:
    modules: dict[str, type] = field(default_factory=dict)

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
                if issubclass(value, dspy.Module):
                    code.modules[f"{name}:{attribute}"] = value
        return code



def build_custom(cls: type, init: dict[str, Any], field_name: str = "init") -> Any:
    """An instance of the operator's module class; a constructor that refuses `init`
    is invalid_args (its own message), never internal."""
    try:
        return cls(**init)
    except (TypeError, ValueError) as exc:
        raise invalid_field(field_name, f"{cls.__name__} refused these arguments: "
                            f"{exc}"[:500]) from None
