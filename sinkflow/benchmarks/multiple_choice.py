"""VLMEvalKit's rule-based multiple-choice extraction (`can_infer`: `can_infer_option`, then `can_infer_text`), the
path its MCQ datasets take without an LLM judge; every benchmark's `vlmevalkit` parser reads option letters with it
(docs/benchmarks.md#scienceqa-img-parsing)."""

from __future__ import annotations

import re

# Answers VLMEvalKit reads as a refusal (its option "Z", never the ground truth).
_REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
_SEPARATORS = ".()[],:;!*#{}"
# Only A-D, case-insensitive and without a word boundary, as in the original ("answer is Apple" gives A).
_STATED = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**")
_REFUSED = "Z"


def _option(answer: str, choices: dict[str, str]) -> str | None:
    """`can_infer_option`: a letter, "Z" (refused: final) or None (try the option texts)."""
    if "Failed to obtain answer via API" in answer:
        return None
    if any(refusal in answer for refusal in _REFUSALS):
        return _REFUSED
    spaced = answer
    for separator in _SEPARATORS:
        spaced = spaced.replace(separator, " ")
    tokens = spaced.split()
    present = [letter for letter in choices if letter in tokens]
    if len(present) == 1:
        # The letter's first occurrence must be among the last four tokens (VERBOSE unset, as by default).
        if tokens.index(present[0]) > len(tokens) - 5:
            return present[0]
    elif not present and "Z" in tokens:
        return _REFUSED
    stated = _STATED.search(answer)
    if stated and stated.group(1).upper() in choices:
        return stated.group(1).upper()
    return None


def _text(answer: str, choices: dict[str, str]) -> str | None:
    """`can_infer_text`: the one option whose text the (not too long) answer contains, lower-cased."""
    answer = answer.lower()
    if len(answer) > 2 * sum(len(text) for text in choices.values()):
        return None
    found = [letter for letter, text in choices.items() if text.lower() in answer]
    return found[0] if len(found) == 1 else None


def can_infer(answer: str, choices: dict[str, str]) -> str | None:
    """VLMEvalKit's `can_infer` (`choices`: letter -> option text): a letter, "Z" for a refusal, or None."""
    letter = _option(answer, choices)
    return letter if letter is not None else _text(answer, choices)


def choice_vlmevalkit(answer: str, choices: dict[str, str]) -> str | None:
    """The option letter VLMEvalKit infers from an answer, or None when it infers none or reads a refusal (both
    always wrong: its "Z" is never an answer)."""
    letter = can_infer(answer, choices)
    return None if letter == _REFUSED else letter
