"""Yes/no answer extraction that POPE and MME share under the `vlmevalkit` parser (VLMEvalKit's `YOrN_Extraction`,
with the VQA-eval punctuation handling it applies)."""

from __future__ import annotations

import re

_VQA_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")
# The original pattern's "(?!<=\d)" is a (mistyped) lookahead: it removes every period not followed by a digit.
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")


def vqa_punctuation(text: str, period: re.Pattern[str] = _PERIOD) -> str:
    """VQA-eval `processPunctuation`, quirks included (a period pass capped at 32 removals, as `re.UNICODE` lands
    in the `count` argument of the original call). `period` matches the periods removed: by default VQA-eval's
    mistyped pattern; VLMEvalKit corrected it in 2025 (TextVQA's `vlmevalkit` rule), a change no yes/no word sees."""
    out = text
    for p in _VQA_PUNCT:
        if (p + " " in text or " " + p in text) or _COMMA_BETWEEN_DIGITS.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return period.sub("", out, count=re.UNICODE)


def yes_no_vlmevalkit(text: str) -> str | None:
    """VLMEvalKit `YOrN_Extraction`: yes xor no among the punctuation-processed lower-case words."""
    words = vqa_punctuation(text.lower()).split()
    if "yes" in words and "no" not in words:
        return "yes"
    if "no" in words and "yes" not in words:
        return "no"
    return None
