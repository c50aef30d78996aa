"""Prompt pieces that several benchmarks (and the shapes data written in their formats) share."""

from __future__ import annotations

SHORT_ANSWER = "\nAnswer the question using a single word or phrase."


def short_answer_prompt(question: str, suffix: str = SHORT_ANSWER) -> str:
    """The model prompt of a POPE, MME or open question: the question, then the instruction (LLaVA / lmms-eval's
    single-word-or-phrase suffix unless another is configured)."""
    return question.strip() + suffix
