"""Answer parsing rules of the three reference toolkits, per benchmark (docs/benchmarks.md: POPE, MME, MMStar parsing).

`official` reproduces the benchmark authors' scripts (POPE `evaluate.py` = LLaVA `eval_pope.py`, MME
`calculation.py`, MMStar `evaluate/mmstar.py`), `lmms_eval` and `vlmevalkit` the two toolkits. The same raw
responses give different scores under different rules, so every metric names the rule that produced it.
Parsed yes/no values are "yes", "no" or None (unparseable); MMStar parsers return a letter or "".
"""

from __future__ import annotations

import re

RULES = ("official", "lmms_eval", "vlmevalkit")

# VQA-eval punctuation handling that VLMEvalKit's YOrN_Extraction applies.
_VQA_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")
# The original pattern's "(?!<=\d)" is a (mistyped) lookahead: it removes every period not followed by a digit.
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")


def check_rule(rule: str) -> str:
    if rule not in RULES:
        raise ValueError(f"unknown parser {rule!r}; expected one of {RULES}")
    return rule


def vqa_punctuation(text: str) -> str:
    """VQA-eval `processPunctuation`, quirks included (a period pass capped at 32 removals, as `re.UNICODE` lands
    in the `count` argument of the original call)."""
    out = text
    for p in _VQA_PUNCT:
        if (p + " " in text or " " + p in text) or _COMMA_BETWEEN_DIGITS.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out, count=re.UNICODE)


def yes_no_vlmevalkit(text: str) -> str | None:
    """VLMEvalKit `YOrN_Extraction`: yes xor no among the punctuation-processed lower-case words."""
    words = vqa_punctuation(text.lower()).split()
    if "yes" in words and "no" not in words:
        return "yes"
    if "no" in words and "yes" not in words:
        return "no"
    return None


def parse_pope(text: str, rule: str = "official") -> str | None:
    """POPE yes/no. `official`: anything without the words No / not / no (before the first period) is yes."""
    if check_rule(rule) == "official":
        if "." in text:
            text = text.split(".")[0]
        words = text.replace(",", "").split(" ")
        return "no" if any(w in ("No", "not", "no") for w in words) else "yes"
    if rule == "lmms_eval":
        pred = text.lower().strip()
        return pred if pred in ("yes", "no") else None
    return yes_no_vlmevalkit(text)


def parse_mme(text: str, rule: str = "official") -> str | None:
    """MME yes/no. `official`: lower-cased; exactly yes/no, else 'yes' then 'no' searched in the first 4 characters."""
    if check_rule(rule) == "vlmevalkit":
        return yes_no_vlmevalkit(text)
    pred = text.lower()
    if rule == "lmms_eval":
        pred = pred.strip().replace(".", "")
        if pred in ("y", "n"):
            return "yes" if pred == "y" else "no"
    if pred in ("yes", "no"):
        return pred
    prefix = pred[:4]
    return "yes" if "yes" in prefix else "no" if "no" in prefix else None


_MMSTAR_PREFIXES = ("(", "option ", "the answer is ")
_LETTERS = "ABCD"


def mmstar_official_correct(text: str, answer: str) -> bool:
    """MMStar's official check: lower-cased, stripped, newlines as spaces; the letter first, after '(',
    'option ' or 'the answer is '. An empty response is wrong."""
    pred = text.lower().strip().replace("\n", " ")
    ans = answer.lower().strip().replace("\n", " ")
    if not pred:
        return False
    if pred[0] == ans:
        return True
    return any(pred.startswith(p) and len(pred) > len(p) and pred[len(p)] == ans for p in _MMSTAR_PREFIXES)


_PHRASES = re.compile(r"(?:the answer is|answer is|the correct answer is|i choose|i select|i pick)\s*\(?([A-D])\b",
                      re.IGNORECASE)
# (pattern, priority): lmms-eval's tiers as documented in docs/benchmarks.md#mmstar-parsing; letters are case-sensitive.
_TIERS = (
    (re.compile(r"^([A-D])\b"), 10),
    (re.compile(r"\b([A-D])$"), 9),
    (_PHRASES, 7),
    (re.compile(r"\(([A-D])\)"), 6),
    (re.compile(r"\b([A-D])\."), 5),
    (re.compile(r"\b([A-D]):"), 4),
    (re.compile(r"\b([A-D])\)"), 3),
    (re.compile(r"\b([A-D]) "), 2),
)


def mmstar_lmms_eval_letter(text: str) -> str:
    """lmms-eval's MCQ extraction (A-D, case-sensitive): the highest tier wins, the later match within a tier;
    else any occurrence of a letter; else ""."""
    stripped = text.strip().strip(".,;:!?()[]{}\"' \n")
    best: tuple[int, int, str] | None = None
    for pattern, priority in _TIERS:
        for match in pattern.finditer(stripped):
            candidate = (priority, match.start(1), match.group(1))
            best = candidate if best is None or candidate[:2] > best[:2] else best
    if best is not None:
        return best[2]
    anywhere = re.search(r"[A-D]", stripped)
    return anywhere.group() if anywhere else ""


def mmstar_options(question: str) -> dict[str, str]:
    """Option texts of an MMStar question (`Options: A: ..., B: ..., ...`)."""
    if "Options:" not in question:
        return {}
    tail = question.split("Options:", 1)[1]
    parts = re.split(r"(?:^|,\s*)([A-D]):\s*", tail.strip())
    return {parts[i]: parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}


def mmstar_vlmevalkit_letter(text: str, options: dict[str, str]) -> str:
    """VLMEvalKit `can_infer`: one choice letter among the last 4 tokens (or "answer is X"), else one option text
    contained in the response, else ""."""
    spaced = text
    for ch in ".()[],:;!*#{}":
        spaced = spaced.replace(ch, " ")
    tokens = spaced.split()
    found = {t for t in tokens[-4:] if t in options}
    if len(found) == 1:
        return found.pop()
    stated = re.search(r"(?:correct )?answer is:?\s*\(?([A-D])\b", text, re.IGNORECASE)
    if stated and stated.group(1).upper() in options:
        return stated.group(1).upper()
    lowered = text.lower()
    contained = [letter for letter, option in options.items() if option and option.lower() in lowered]
    return contained[0] if len(contained) == 1 else ""


def mmstar_correct(record: dict, rule: str = "official") -> bool:
    """Whether an MMStar prediction is right under `rule`."""
    if check_rule(rule) == "official":
        return mmstar_official_correct(record["prediction"], record["answer"])
    if rule == "lmms_eval":
        return mmstar_lmms_eval_letter(record["prediction"]) == record["answer"]
    return mmstar_vlmevalkit_letter(record["prediction"], mmstar_options(record["question"])) == record["answer"]
