"""Benchmark scores exactly as the official tools compute them (docs/benchmarks.md), from the answered records.

`score_records` is the one implementation: each `(benchmark, id)` counted once (its first record), each benchmark's
records scored by its registered `Benchmark` class, then the per-`scope` accuracies and a deciding strategy's
routing shares (`sinkflow.eval.benchmark_scores` wraps it as a torchmetrics metric). Keys follow
docs/contracts.md#metric-keys. No torch here: the scoring CLI starts in about a second.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict

from sinkflow.benchmarks.base import BENCHMARKS, Benchmark, Parser, accuracies
from sinkflow.checks import choice
from sinkflow.data.predictions import record_key
from sinkflow.sinks.routing_answers import route_of


def unique_records(records: list[dict]) -> list[dict]:
    """The first record of each `(benchmark, id)`, in order."""
    first: dict[tuple[str, str], dict] = {}
    for record in records:
        first.setdefault(record_key(record), record)
    return list(first.values())


def benchmark_problem(name: str, allow_unknown: bool = False) -> str | None:
    """What is wrong with a record's benchmark name, or None. With `allow_unknown`, any name that can prefix its
    own metric keys is accepted ("all" and names with "/" would write into other keys)."""
    if name in BENCHMARKS:
        return None
    if not allow_unknown:
        return f"unknown benchmark {name!r}; expected one of {tuple(BENCHMARKS.names())}"
    if not name or "/" in name or name == "all":
        return (
            f"an unknown benchmark's name prefixes its metric keys, so it must not be empty, 'all' or contain "
            f"'/', got {name!r}"
        )
    return None


def score_records(records: list[dict], parser: Parser = "official", allow_unknown: bool = False) -> dict[str, float]:
    """Every metric of a set of prediction records: each benchmark's own, plus per `scope`
    (`<benchmark>/<scope>/accuracy`, and `all/<scope>/accuracy` over the benchmarks whose class counts into it)
    where records have one, and `routing/*` where a strategy decided.

    A benchmark that is not registered is an error (a misspelt `popee` would otherwise be scored by exact match and
    mixed into `all/*`); with `allow_unknown` it is scored by first-word exact match under its own name only."""
    choice("parser", parser, Parser)
    records = unique_records(records)
    by_benchmark: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        problem = benchmark_problem(record["benchmark"], allow_unknown)
        if problem:
            hint = "" if allow_unknown else "; allow_unknown scores it by first-word exact match, outside all/*"
            raise ValueError(f"record {record['id']!r}: benchmark: {problem}{hint}")
        by_benchmark[record["benchmark"]].append(record)
    out: dict[str, float] = {}
    scope_hits: list[tuple[str, bool]] = []
    for name, group in by_benchmark.items():
        registered = BENCHMARKS.get(name)
        benchmark = registered or Benchmark
        out.update(benchmark.score(group, parser))
        for record in group:
            if record.get("scope"):
                right = benchmark.correct(record, parser)
                scope_hits.append((f"{name}/{record['scope']}/accuracy", right))
                if registered is not None and registered.counts_in_all:
                    scope_hits.append((f"all/{record['scope']}/accuracy", right))
    out.update(accuracies(scope_hits))
    out.update(routing_metrics(records))
    return dict(sorted(out.items()))


def routing_metrics(records: list[dict]) -> dict[str, float]:
    """A deciding strategy's choices (cot_route's `routing` field) over records that hold each question once: the
    share of routed images sent down each route, `routing/<route>`, and the mean time spent deciding,
    `routing/seconds_per_image`. A question with several images holds a list of decisions, one per image; with one
    image per question, image shares are question shares.

    Where a record carries the truth (shapes data: its question's `scope`, its images' `image_type`), each of its
    decisions that names the labels (cot_route's `question` and `image`) is judged against it:
    `routing/accuracy/question` (the scope label), `routing/accuracy/image` (the image-type label; an 'unknown' answer
    is wrong), and per true route (symbolic + global: sinks_only, real_world + local: others_only, otherwise both)
    the share of its decisions routed to it, `routing/accuracy/<route>`, with `routing/accuracy/route` over all of
    them. `routing/count/<same>` is the number of decisions each is over."""
    decided = [
        (r, decision)
        for r in records
        if r.get("routing")
        for decision in (r["routing"] if isinstance(r["routing"], list) else [r["routing"]])
    ]
    if not decided:
        return {}
    routes = Counter(d["route"] for _, d in decided)
    out = {f"routing/{route}": n / len(decided) for route, n in routes.items()}
    seconds = [d["seconds"] for _, d in decided if "seconds" in d]
    if seconds:
        # fsum: the same mean whatever order the ranks' records were joined in.
        out["routing/seconds_per_image"] = math.fsum(seconds) / len(seconds)
    hits = []
    for record, decision in decided:
        # Judged where both sides exist: the record's truth and the decision's label for it.
        scope = record.get("scope") if "question" in decision else None
        image_type = record.get("image_type") if "image" in decision else None
        if scope:
            hits.append(("question", decision["question"] == scope))
        if image_type:
            hits.append(("image", decision["image"] == image_type))
        if scope and image_type:
            truth = route_of(image_type, scope)
            hits += [("route", decision["route"] == truth), (truth, decision["route"] == truth)]
    out.update({f"routing/accuracy/{key}": value for key, value in accuracies(hits).items()})
    out.update({f"routing/count/{key}": float(n) for key, n in Counter(key for key, _ in hits).items()})
    return out


def multimodal_gain(
    with_image: dict[str, float],
    without_image: dict[str, float],
    text_only: dict[str, float] | None = None,
    key: str = "mmstar/overall",
) -> dict[str, float]:
    """MMStar's MG = S_v - S_wv (the same LVLM with and without images) and, given the base LLM's text-only
    score S_t, ML = max(0, S_wv - S_t)."""
    for name, scores in (("with-image", with_image), ("without-image", without_image), ("text-only", text_only)):
        if scores is not None and key not in scores:
            raise ValueError(f"the {name} scores have no {key!r}: score MMStar predictions")
    out = {"mmstar/multimodal_gain": with_image[key] - without_image[key]}
    if text_only is not None:
        out["mmstar/leakage"] = max(0.0, without_image[key] - text_only[key])
    return out
