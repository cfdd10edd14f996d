"""Provider failures and hostile answers as typed `lm_error`s, scrubbed then truncated."""

from __future__ import annotations

import re
from typing import Any

import dspy
import pydantic

from dspy_bridge.domain.redaction import book, scrub
from dspy_bridge.protocol.codec import limit_problem
from dspy_bridge.protocol.errors import BridgeError, ErrorType

# Outputs sit 3 levels down in a reply (reply, result, outputs): 100 leaves room.
OUTPUT_MAX_DEPTH = 100
RAW_EXCERPT_CHARS = 500
MESSAGE_CHARS = 1000
# DSPy's adapters say which field failed at the start of their message.
FAILED_FIELD = re.compile(r"Failed to parse field (\w+)")


def truncate(text: str, limit: int, secrets: frozenset[str] = frozenset()) -> str:
    """Scrubbed first, then cut: a secret cut at the limit must not leave a fragment."""
    text = scrub(text, secrets | book.operator)
    return text if len(text) <= limit else text[:limit] + f"... [{len(text) - limit} more chars]"


def _class_path(exc: BaseException) -> str:
    cls = type(exc)
    return f"{cls.__module__}.{cls.__qualname__}"


def provider_error(exc: Exception, model: str, secrets: frozenset[str]) -> BridgeError:
    chain: list[str] = []
    cause: BaseException | None = exc.__cause__
    while cause is not None and len(chain) < 5:
        chain.append(_class_path(cause))
        cause = cause.__cause__
    retryable = bool(dspy.is_retryable_lm_error(exc))
    text = getattr(exc, "message", "") or str(exc)
    return BridgeError(
        ErrorType.LM_ERROR,
        f"{model}: {type(exc).__name__}: {truncate(text, MESSAGE_CHARS, secrets)}",
        retryable=retryable,
        details={
            "reason": "provider_error",
            "error_class": type(exc).__name__,
            "provider_error_class": chain[-1].rsplit(".", 1)[-1] if chain else type(exc).__name__,
            "cause_chain": chain,
            "code": getattr(exc, "code", None),
            "status": getattr(exc, "status", None),
            "provider": getattr(exc, "provider", None),
            "retry_after_s": getattr(exc, "retry_after", None),
            "model": model,
        },
    )


def invalid_output(model: str, field_name: str | None, problem: str) -> BridgeError:
    where = "answer" if field_name is None else f"answer for {field_name!r}"
    return BridgeError(
        ErrorType.LM_ERROR,
        f"{model}: the LM's {where} cannot be sent back: it {problem}",
        retryable=False,
        details={"reason": "invalid_output", "field": field_name, "problem": problem,
                 "model": model},
    )


def check_outputs(outputs: dict[str, Any], model: str) -> None:
    """A hostile provider's answer never becomes a reply the host's decoder refuses."""
    for name, value in outputs.items():
        problem = limit_problem(value, OUTPUT_MAX_DEPTH)
        if problem is not None:
            raise invalid_output(model, name, problem[1])


def failed_field(exc: Any) -> tuple[str | None, str | None]:
    """The output field a parse error is about, and what is wrong with it: a value that
    does not fit the field's declared type (where inside it, by pydantic's account, which
    never quotes the value), or a field the answer lacks."""
    expected = list(exc.signature.output_fields)
    match = FAILED_FIELD.match(str(getattr(exc, "message", "") or ""))
    if match is not None and match.group(1) in expected:
        problem = "does not fit its declared type"
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, pydantic.ValidationError) and cause.errors():
            first = cause.errors()[0]
            where = ".".join(str(part) for part in first.get("loc", ()))
            problem += f": {f'at {where}: ' if where else ''}{first.get('msg', '')}"
        return match.group(1), problem[:RAW_EXCERPT_CHARS]
    parsed = exc.parsed_result
    if isinstance(parsed, dict):
        missing = [name for name in expected if name not in parsed]
        if missing:
            return missing[0], "is missing from the answer"
    return None, None


def parse_error(exc: Any, model: str, secrets: frozenset[str]) -> BridgeError:
    raw = str(exc.lm_response or "")
    field_name, problem = failed_field(exc)
    where = "" if field_name is None else f": the output {field_name!r} {problem}"
    return BridgeError(
        ErrorType.LM_ERROR,
        f"{model}: the LM's answer could not be parsed into the output fields{where}",
        retryable=False,
        details={
            "reason": "unparseable_answer",
            "error_class": type(exc).__name__,
            "adapter": exc.adapter_name,
            "expected_fields": list(exc.signature.output_fields),
            "field": field_name,
            "problem": None if problem is None else truncate(problem, RAW_EXCERPT_CHARS, secrets),
            "raw_excerpt": truncate(raw, RAW_EXCERPT_CHARS, secrets),
            "raw_length": len(raw),
            "model": model,
        },
    )


def no_prediction(program_type: str, model: str) -> BridgeError:
    """BestOfN and Refine answer nothing when every attempt failed (within fail_count)."""
    return BridgeError(
        ErrorType.LM_ERROR,
        f"{model}: every attempt of the {program_type} program failed",
        retryable=False,
        details={"reason": "all_attempts_failed", "model": model},
    )


HISTORY_TEXT_CHARS = 4000


def history_entry(entry: dict[str, Any], lm: Any) -> dict[str, Any]:
    """One of DSPy's LM history entries as get_history shows it: each text scrubbed of
    the LM's secrets, then cut to HISTORY_TEXT_CHARS."""
    secrets = lm.checked.secrets

    def text(value: Any) -> str:
        return truncate(value if isinstance(value, str) else str(value), HISTORY_TEXT_CHARS,
                        secrets)

    messages = [{"role": str(message.get("role")), "content": text(message.get("content"))}
                for message in entry.get("messages") or [] if isinstance(message, dict)]
    usage = {key: value for key, value in (entry.get("usage") or {}).items()
             if isinstance(value, int) and not isinstance(value, bool)}
    cost = entry.get("cost")
    outputs = [text(output) for output in entry.get("outputs") or []]
    return {"model": str(entry.get("model", lm.model)), "timestamp": str(entry.get("timestamp")),
            "messages": messages, "outputs": outputs, "usage": usage,
            "cost_usd": cost if isinstance(cost, int | float) else None}
