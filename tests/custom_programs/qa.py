"""A user's DSPy module with two predictors, and its constructor's arguments as data."""

from __future__ import annotations

from typing import Any, Literal

import dspy
from dspy import Predict  # imported here, not defined here: never creatable by name


class DraftThenPolish(dspy.Module):  # type: ignore[misc]
    """Drafts an answer, then polishes it in the given style."""

    def __init__(self, style: str = "plain") -> None:
        super().__init__()
        if style not in {"plain", "formal"}:
            raise ValueError(f"unknown style {style!r}")
        self.style = style
        self.draft = dspy.Predict("question -> draft")
        self.polish = dspy.Predict("draft, style -> answer")

    def forward(self, question: str) -> Any:
        draft = self.draft(question=question).draft
        return self.polish(draft=draft, style=self.style)


class AsyncEcho(dspy.Module):  # type: ignore[misc]
    """A module with an async path of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.say = dspy.Predict("text -> echo")

    async def aforward(self, text: str) -> Any:
        return await self.say.acall(text=text)

    def forward(self, text: str) -> Any:
        return self.say(text=text)


__all__ = ["AsyncEcho", "BasicQA", "DraftThenPolish", "Predict", "Unwireable"]


class BasicQA(dspy.Signature):  # type: ignore[misc]
    """Answer questions with short factoid answers."""

    question: str = dspy.InputField()
    context: list[str] | None = dspy.InputField(desc="may be empty")
    answer: str = dspy.OutputField(desc="often between 1 and 5 words")
    confidence: Literal["low", "high"] = dspy.OutputField()


class Unwireable(dspy.Signature):  # type: ignore[misc]
    """A field of a type the wire cannot carry."""

    question: str = dspy.InputField()
    answer: complex = dspy.OutputField()
