"""Program documents: what export_program writes and import_program reads — a program's
type, signature, LM settings without secrets, and its DSPy state, versioned."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from dspy_bridge.domain.engine_port import ProgramHandle
from dspy_bridge.domain.lm import LmConfig
from dspy_bridge.domain.models import Args, ProgramId

DOCUMENT_FORMAT = "dspy-bridge/program"
DOCUMENT_VERSION = 1


class ProgramDocument(Args):
    format: Literal["dspy-bridge/program"]
    version: Literal[1]
    program_id: ProgramId | None = None
    program_type: Annotated[str, Field(min_length=1, max_length=100)]
    signature: dict[str, Any]
    lm: LmConfig | None = None
    state: dict[str, Any]
    options: dict[str, Any] = Field(default_factory=dict)
    dspy_version: str | None = None
    secrets_omitted: list[str] = Field(default_factory=list)


def program_document(
    program: ProgramHandle, state: dict[str, Any], dspy_version: str
) -> dict[str, Any]:
    """The document of a program whose DSPy state is `state`; its LM's secrets are left
    out and named in `secrets_omitted`."""
    lm, omitted = (None, []) if program.lm is None else program.lm.checked.exportable()
    return {
        "format": DOCUMENT_FORMAT,
        "version": DOCUMENT_VERSION,
        "program_id": program.program_id,
        "program_type": program.program_type,
        "signature": program.spec.to_wire(),
        "lm": lm,
        "state": state,
        "options": program.options,
        "dspy_version": dspy_version,
        "secrets_omitted": omitted,
    }
