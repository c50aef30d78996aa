"""What cot_route's routing answers mean (docs/paper.md#cot-routing): the labels each question's answer is parsed
into, the route a pair of labels takes, and how many tokens an answer needs. Plain Python (no torch), so that the
scorer can judge recorded decisions against a scene's ground truth (`sinkflow.eval.metrics`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# label -> keywords (whole words, case-insensitive). Each label's first keyword is the answer the configured prompts
# ask for (conf/routing/cot.yaml: 'symbolic' or 'real-world', 'global' or 'local').
IMAGE_KEYWORDS = {
    "symbolic": ("symbolic", "simple", "diagram", "chart", "synthetic", "schematic", "abstract", "drawing"),
    "real_world": ("real-world", "real world", "realworld", "real", "complex", "photo", "photograph", "natural"),
}
QUESTION_KEYWORDS = {
    "global": ("global", "holistic", "whole", "overall", "entire"),
    "local": ("local", "detail", "details", "detailed", "specific", "region"),
}
ANSWERS = tuple(words[0] for words in (*IMAGE_KEYWORDS.values(), *QUESTION_KEYWORDS.values()))
NEGATION = r"\b(?:not|isn't|is not|no|neither|nor|rather than|instead of)\s+(?:an?\s+|the\s+)?$"
ROUTES = {("symbolic", "global"): "sinks_only", ("real_world", "local"): "others_only"}


def route_of(image: str, scope: str) -> str:
    """The route of an image-type label and a question-scope label: sinks_only, others_only, or both."""
    return ROUTES.get((image, scope), "both")


def parse_label(answer: str, keywords: dict[str, tuple[str, ...]]) -> str:
    """The label whose keyword appears first in `answer` (negated keywords skipped), or 'unknown'."""
    text = answer.lower()
    found = []
    for label, words in keywords.items():
        for word in words:
            for match in re.finditer(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text):
                if not re.search(NEGATION, text[: match.start()]):
                    found.append((match.start(), label))
    return min(found)[1] if found else "unknown"


def decide(image_answer: str, question_answer: str) -> dict:
    """The routing decision for one image from the model's two answers."""
    image, scope = parse_label(image_answer, IMAGE_KEYWORDS), parse_label(question_answer, QUESTION_KEYWORDS)
    return {
        "image": image,
        "question": scope,
        "route": route_of(image, scope),
        "image_answer": image_answer,
        "question_answer": question_answer,
    }


def answer_tokens(tokenizer, answers: Iterable[str] = ANSWERS) -> int:
    """The fewest new tokens that let the parser read every expected answer: for each answer, alone or after a space
    (it may follow the prompt directly or after a space, which a tokenizer may write as a token of its own), the
    shortest prefix of its tokens that parses to the answer's own label ('real-world' is read as real-world once
    'real' is out); the most over the answers. `tokenizer` encodes (`__call__`) and decodes."""
    keywords = {**IMAGE_KEYWORDS, **QUESTION_KEYWORDS}

    def needed(text: str) -> int:
        label = parse_label(text, keywords)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return next(n for n in range(1, len(ids) + 1) if parse_label(tokenizer.decode(ids[:n]), keywords) == label)

    return max(needed(text) for answer in answers for text in (answer, f" {answer}"))
