"""Basic scoring of predictions: exact match after light normalisation, per benchmark / category / scope.

The benchmarks' official parsers and metrics (POPE F1, MME acc+, MMStar micro accuracy) build on these records;
this module gives the quick accuracy table that training and the shapes demo report.
"""

from __future__ import annotations

import re
from collections import defaultdict


def normalise(text: str) -> str:
    """First word, lower-cased, without surrounding punctuation ("Yes." -> "yes", "(B) cat" -> "b")."""
    words = text.strip().split()
    return re.sub(r"^\W+|\W+$", "", words[0]).lower() if words else ""


def is_correct(record: dict) -> bool:
    """Whether the prediction's first word equals the ground truth (case- and punctuation-insensitive)."""
    return normalise(record["prediction"]) == normalise(str(record["answer"]))


def accuracy_table(records: list[dict]) -> dict[str, float]:
    """Flat metrics: `<benchmark>/accuracy`, `<benchmark>/<category>/accuracy`, `<benchmark>/<scope>/accuracy`."""
    hits: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for record in records:
        ok = int(is_correct(record))
        keys = [f"{record['benchmark']}/accuracy"]
        for field in ("category", "scope"):
            if record.get(field):
                keys.append(f"{record['benchmark']}/{record[field]}/accuracy")
        if record.get("scope"):
            keys.append(f"all/{record['scope']}/accuracy")
        for key in keys:
            hits[key][0] += ok
            hits[key][1] += 1
    return {key: correct / total for key, (correct, total) in sorted(hits.items())}
