"""What every benchmark module provides to the scorer, and the registry the scorer finds it in.

A benchmark is one module of this package: its loaders, its answer parsing per parser, and a `Benchmark` subclass
that names itself at definition (`class POPE(Benchmark, name="pope")`). Nothing else lists benchmarks: scoring,
record checks and the `all/*` aggregates read the registry (docs/benchmarks.md#adding-a-benchmark).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from typing import ClassVar, Literal

from sinkflow.registry import Registry

# The answer rules a score is computed under (docs/benchmarks.md#parsers): the benchmark authors' own scripts, or
# one of the two toolkits.
Parser = Literal["official", "lmms_eval", "vlmevalkit"]


def first_word(text: str) -> str:
    """First word, lower-cased, without surrounding punctuation ("Yes." -> "yes", "(B) cat" -> "b")."""
    words = text.strip().split()
    return re.sub(r"^\W+|\W+$", "", words[0]).lower() if words else ""


def accuracies(hits: Iterable[tuple[str, bool]]) -> dict[str, float]:
    """Per key, the share of right answers among its `(key, right)` pairs."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for key, right in hits:
        counts[key][0] += int(right)
        counts[key][1] += 1
    return {key: right / total for key, (right, total) in counts.items()}


class Benchmark:
    """How the records of one benchmark are judged and scored under a parser.

    The defaults are those of a benchmark without an official metric (the shapes `open` set, and unknown names
    scored with `allow_unknown`): a prediction is right when its first word equals the answer's, and the scores are
    `<benchmark>/accuracy` and `<benchmark>/<category>/accuracy`.
    """

    name: ClassVar[str]
    # Whether the `scope` accuracies of its records count into `all/<scope>/accuracy`.
    counts_in_all: ClassVar[bool] = True
    # Questions only the generated shapes data has: no release, so no loader in conf/dataset/benchmarks.yaml.
    shapes_only: ClassVar[bool] = False
    # Record fields its `score` reads besides the common ones; strings, checked when a predictions file is read.
    fields: ClassVar[tuple[str, ...]] = ()
    # The values `score` accepts for some of those fields (and `answer`, compared lower-cased), checked there too.
    values: ClassVar[dict[str, tuple[str, ...]]] = {}

    def __init_subclass__(cls, name: str | None = None, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if name is not None:
            cls.name = name
            BENCHMARKS.register(name, cls)

    @staticmethod
    def correct(record: dict, parser: Parser) -> bool:
        """Whether one prediction is right."""
        return first_word(record["prediction"]) == first_word(str(record["answer"]))

    @classmethod
    def score(cls, records: list[dict], parser: Parser) -> dict[str, float]:
        """The metrics of the benchmark's records (each question once), keyed `<benchmark>/...`."""
        hits = []
        for record in records:
            right, prefix = cls.correct(record, parser), record["benchmark"]
            hits.append((f"{prefix}/accuracy", right))
            if record.get("category"):
                hits.append((f"{prefix}/{record['category']}/accuracy", right))
        return accuracies(hits)

    @classmethod
    def record_problem(cls, record: dict) -> tuple[str, str] | None:
        """`(field, what is wrong)` for the first value outside `values`, or None."""
        for name, allowed in cls.values.items():
            value = record[name].lower() if name == "answer" else record[name]
            if value not in allowed:
                return name, f"expected one of {allowed} for {record['benchmark']}, got {record[name]!r}"
        return None


BENCHMARKS: Registry[type[Benchmark]] = Registry("benchmark", "sinkflow.benchmarks")
