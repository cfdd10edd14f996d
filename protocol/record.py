"""`@record`: a dataclass the type checker holds frozen (assigning a field is an error
`mypy --strict` reports), built at run time as a plain slots dataclass.

A frozen dataclass's `__init__` sets every field through `object.__setattr__`, four times
the cost of a plain one; the request path builds several such objects a request (a
frame, its read, the request, the handler's context, the reply sent), which made their
construction ≈ 10 % of a ping's whole cost in the worker."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar, dataclass_transform

T = TypeVar("T")


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def record(cls: type[T]) -> type[T]:
    return dataclass(slots=True)(cls)
