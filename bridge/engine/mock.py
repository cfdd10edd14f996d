"""The mock provider: deterministic answers with no network, behind DSPy's engine interface.

`dspy.LM("mock/<name>", engine=MockEngine(...), async_engine=AsyncMockEngine(...))`: DSPy's
adapter formats the prompt into a canonical `dspy.lm15.Request` exactly as for a real
provider, the engine answers with a `dspy.lm15.Response` in the format that adapter asked
for, and the adapter parses it back into typed output fields. Failures are raised as the
lm15 errors a real engine raises, so DSPy classifies and retries them as it would.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from dspy import lm15
from dspy.clients.engines.base import validate_request

from dspy_bridge.domain.host import HostCallFailed, Purpose
from dspy_bridge.engine.tools import current_host, noted

if TYPE_CHECKING:
    from dspy_bridge.domain.lm import MockOptions

MISSING: Any = object()
RAW_KEY = "__raw__"
OUTPUT_SECTION = re.compile(r"Your output fields are:\n(.*?)(?:\nAll interactions|\Z)", re.S)
OUTPUT_FIELD = re.compile(r"^\d+\. `(\w+)` \((.+?)\):", re.M)
INPUT_FIELD = re.compile(r"\[\[ ## (\w+) ## \]\]\n")
OBJECTIVE = re.compile(r"your objective is: \n(.*)\Z", re.S)
INPUT_SECTION = re.compile(r"Your input fields are:\n(.*?)\nYour output fields are:", re.S)
RESPOND_MARKER = re.compile(r"\n\nRespond with (?:the corresponding output fields|a JSON object)")
TOKEN = re.compile(r"\w+|[^\w\s]")

ERRORS: dict[str, tuple[type[lm15.LM15Error], int | None]] = {
    "rate_limit": (lm15.RateLimitError, 429),
    "server": (lm15.ServerError, 500),
    "timeout": (lm15.TimeoutError, 408),
    "transport": (lm15.TransportError, None),
    "auth": (lm15.AuthError, 401),
    "billing": (lm15.BillingError, 402),
    "invalid_request": (lm15.InvalidRequestError, 400),
    "context_length": (lm15.ContextLengthError, 400),
}


def count_tokens(text: str) -> int:
    """A deterministic stand-in for a tokenizer: words and punctuation marks."""
    return len(TOKEN.findall(text))


# A program's system prompt is the same on every call: count it once.
_count_system_tokens = functools.lru_cache(maxsize=64)(count_tokens)
WORD_CHAR = re.compile(r"\w")


def count_prompt_tokens(system: str, texts: list[str]) -> int:
    """`count_tokens` of the parts joined, without joining or recounting the system
    prompt: the counts add up, less one wherever a word runs across a join."""
    total, previous = _count_system_tokens(system), system
    for text in texts:
        if not text:
            continue
        total += count_tokens(text)
        if previous and WORD_CHAR.match(previous[-1]) and WORD_CHAR.match(text[0]):
            total -= 1
        previous = text
    return total


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(getattr(part, "text", "") or "" for part in content)


class MockEngine:
    """The synchronous engine; it holds the mock's state (call and sequence counters)."""

    def __init__(self, options: MockOptions, model: str, timeout_s: float | None = None) -> None:
        self.options = options
        self.model = model
        self.timeout_s = timeout_s
        self.calls = 0
        self._sequence_index = 0
        self._lock = threading.Lock()

    # ----- the engine interface -----

    def complete(self, request: lm15.Request) -> lm15.Response:
        delay, outcome = self._planned(request)
        if delay:
            time.sleep(delay)
        return self._deliver(outcome)

    def stream(self, request: lm15.Request) -> Iterator[Any]:
        delay, outcome = self._planned(request)
        events = stream_events(self._deliver(outcome))
        for event in events:
            if isinstance(event, lm15.StreamDeltaEvent):
                time.sleep(delay / len(events))
            yield event

    def _planned(self, request: lm15.Request) -> tuple[float, lm15.Response | Exception]:
        generated = MISSING
        if self.options.generator is not None:  # DSPy's sync path runs in a thread
            try:
                generated = current_host().call_blocking(
                    self.options.generator, Purpose.MOCK, self.generator_args(request))
            except HostCallFailed as failure:
                raise noted(failure) from None
        return self.plan(request, generated)

    def close(self) -> None:
        pass

    # ----- answering -----

    def generator_args(self, request: lm15.Request) -> dict[str, Any]:
        """What a host generator is asked: the prompt's inputs, the outputs wanted, and
        what an optimizer changes: the instructions and the demos (each a user message
        and its answer before the last user message)."""
        system = _text_of(request.system)
        user_texts = [m.text or "" for m in request.messages if m.role == "user"]
        objective = OBJECTIVE.search(system)
        return {"model": self.model,
                "inputs": parse_inputs(user_texts[-1] if user_texts else "", system),
                "outputs": [name for name, _ in parse_output_fields(system)],
                "instructions": objective.group(1).strip() if objective else "",
                "demos": max(len(user_texts) - 1, 0)}

    def plan(self, request: lm15.Request,
             generated: Any = MISSING) -> tuple[float, lm15.Response | Exception]:
        """The simulated latency and the answer (or provider error) for one call; a host
        generator's answer, when there is one, is `generated`."""
        validate_request(request)
        with self._lock:
            call_index = self.calls
            self.calls += 1
        latency = self.options.latency_ms / 1000
        if self.timeout_s is not None and latency > self.timeout_s:
            return self.timeout_s, lm15.TimeoutError(
                f"mock provider did not answer within timeout_s={self.timeout_s}",
                provider="mock", status=408, retry_after=0.0,
            )
        fail = self.options.fail
        if fail is not None and (fail.times is None or call_index < fail.times):
            error_class, status = ERRORS[fail.error]
            message = fail.message or (
                f"simulated {fail.error} failure (mock call #{call_index + 1})")
            return latency, error_class(message, provider="mock", status=status, retry_after=0.0)
        return latency, self._response(request, call_index, generated)

    @staticmethod
    def _deliver(outcome: lm15.Response | Exception) -> lm15.Response:
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def _response(self, request: lm15.Request, call_index: int,
                  generated: Any) -> lm15.Response:
        system = _text_of(request.system)
        user_texts = [m.text or "" for m in request.messages if m.role == "user"]
        last_user = user_texts[-1] if user_texts else ""
        outputs = parse_output_fields(system)
        json_mode = (
            request.config.response_format is not None
            or "Outputs will be a JSON object" in system
            or "Respond with a JSON object" in last_user
        )
        value = generated if generated is not MISSING else self._choose(
            parse_inputs(last_user, system))
        if isinstance(value, dict) and set(value) == {RAW_KEY}:
            text = str(value[RAW_KEY])
        else:
            text = render(assign(value, outputs), outputs, json_mode)
        prompt_tokens = count_prompt_tokens(system, [m.text or "" for m in request.messages])
        usage = lm15.Usage(input_tokens=prompt_tokens, output_tokens=count_tokens(text))
        return lm15.Response(
            id=f"mock-{call_index + 1}",
            model=self.model,
            message=lm15.Message.assistant([lm15.TextPart(text)]),
            finish_reason="stop",
            usage=usage,
        )

    def _choose(self, inputs: dict[str, str]) -> Any:
        responses = self.options.responses
        for text in inputs.values():
            if text in responses:
                return responses[text]
        sequence = self.options.sequence
        if sequence:
            with self._lock:
                index = self._sequence_index
                if index < len(sequence):
                    self._sequence_index += 1
                    return sequence[index]
        if self.options.default is not None:
            return self.options.default
        return MISSING


class AsyncMockEngine:
    """The async counterpart: the same state, latency awaited so cancellation stops it."""

    def __init__(self, sync: MockEngine) -> None:
        self.sync = sync

    async def complete(self, request: lm15.Request) -> lm15.Response:
        delay, outcome = await self._planned(request)
        if delay:
            await asyncio.sleep(delay)
        return self.sync._deliver(outcome)

    async def stream(self, request: lm15.Request) -> AsyncIterator[Any]:
        """The answer in chunks of a few words, its latency spread over them."""
        delay, outcome = await self._planned(request)
        events = stream_events(self.sync._deliver(outcome))
        for event in events:
            if isinstance(event, lm15.StreamDeltaEvent):
                await asyncio.sleep(delay / len(events))
            yield event

    async def _planned(self, request: lm15.Request) -> tuple[float, lm15.Response | Exception]:
        generated = MISSING
        generator = self.sync.options.generator
        if generator is not None:
            try:
                generated = await current_host().call(
                    generator, Purpose.MOCK, self.sync.generator_args(request))
            except HostCallFailed as failure:
                raise noted(failure) from None
        return self.sync.plan(request, generated)

    async def aclose(self) -> None:
        pass


# ----- streaming -----

STREAM_CHUNK = re.compile(r"\S+\s*|\s+")
WORDS_PER_CHUNK = 3


def stream_events(response: lm15.Response) -> list[Any]:
    """The response's stream events, its text cut into chunks of a few words (a provider
    streams tokens; one delta of the whole answer would show no streaming at all)."""
    events: list[Any] = []
    for event in lm15.response_to_events(response):
        delta = getattr(event, "delta", None)
        if not isinstance(delta, lm15.TextDelta):
            events.append(event)
            continue
        words = STREAM_CHUNK.findall(delta.text)
        pieces = ["".join(words[i:i + WORDS_PER_CHUNK])
                  for i in range(0, len(words), WORDS_PER_CHUNK)] or [""]
        for index, piece in enumerate(pieces):
            first = index == 0
            events.append(lm15.StreamDeltaEvent(delta=lm15.TextDelta(
                text=piece, part_index=delta.part_index,
                logprobs=delta.logprobs if first else (),
                logprobs_complete=delta.logprobs_complete if first else True)))
    return events


# ----- reading the formatted prompt -----


@functools.lru_cache(maxsize=64)  # one system prompt per program: parse it once
def parse_output_fields(system: str) -> tuple[tuple[str, str], ...]:
    """(name, type text) of every output field the adapter asks for, in order."""
    section = OUTPUT_SECTION.search(system)
    if section is None:
        return ()
    return tuple(OUTPUT_FIELD.findall(section.group(1)))


@functools.lru_cache(maxsize=64)
def parse_input_names(system: str) -> frozenset[str] | None:
    """The input fields the adapter declares (None when the prompt declares none)."""
    section = INPUT_SECTION.search(system)
    if section is None:
        return None
    return frozenset(name for name, _ in OUTPUT_FIELD.findall(section.group(1)))


def parse_inputs(user_text: str, system: str = "") -> dict[str, str]:
    """The input field values of the last user message, as the adapter rendered them.
    A marker that names no declared input is part of the value before it (ReAct's
    trajectory renders its steps with markers of their own)."""
    marker = RESPOND_MARKER.search(user_text)
    if marker is not None:
        user_text = user_text[: marker.start()]
    parts = INPUT_FIELD.split(user_text)  # [preamble, name1, value1, name2, value2, ...]
    known = parse_input_names(system)
    values: dict[str, str] = {}
    current: str | None = None
    for index in range(1, len(parts) - 1, 2):
        name, text = parts[index], parts[index + 1]
        if current is None or known is None or name in known:
            current = name
            values[name] = text
        else:
            values[current] += f"[[ ## {name} ## ]]\n{text}"
    return {name: text.strip() for name, text in values.items()}


# ----- writing the answer -----


def assign(value: Any, outputs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    names = [name for name, _ in outputs]
    fields: dict[str, Any] = {}
    if value is MISSING:
        pass
    elif is_field_map(value, names):
        fields = {name: item for name, item in value.items() if name in names}
    elif names:
        primary = next((name for name in names if name != "reasoning"), names[0])
        fields[primary] = value
    for name, type_text in outputs:
        if name not in fields:
            fields[name] = placeholder(name, type_text)
    return fields


def is_field_map(value: Any, names: list[str]) -> bool:
    """A map naming output fields (and perhaps `reasoning`, which a program without it
    ignores, so one answer serves predict and chain_of_thought alike); any other key makes
    the map a value, as for a dict-typed output."""
    return (
        isinstance(value, dict)
        and bool(set(value) & set(names))
        and set(value) <= {*names, "reasoning"}
    )


def placeholder(name: str, type_text: str) -> Any:
    """A well-typed answer for a field the mock was given nothing for."""
    if name == "reasoning":
        return "Mock reasoning."
    kind = type_text.replace(" ", "")
    if kind == "int":
        return 0
    if kind == "float":
        return 0.0
    if kind == "bool":
        return False
    if kind.startswith("list"):
        return []
    if kind.startswith("dict"):
        return {}
    if kind.startswith("Literal["):
        choice = re.search(r"'((?:[^'\\]|\\.)*)'|\"((?:[^\"\\]|\\.)*)\"", type_text)
        if choice:
            return choice.group(1) if choice.group(1) is not None else choice.group(2)
    return f"mock {name}"


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def render(fields: dict[str, Any], outputs: Sequence[tuple[str, str]], json_mode: bool) -> str:
    order = [name for name, _ in outputs] + [name for name in fields if name not in dict(outputs)]
    if json_mode:
        return _json({name: fields[name] for name in order})
    sections = []
    for name in order:
        value = fields[name]
        text = value if isinstance(value, str) else _json(value)
        sections.append(f"[[ ## {name} ## ]]\n{text}")
    sections.append("[[ ## completed ## ]]")
    return "\n\n".join(sections)
