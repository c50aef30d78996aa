"""Benchmark scores exactly as the official tools compute them (docs/benchmarks.md), as torchmetrics metrics.

Each metric keeps one encoded row per answered question (a stable hash of `benchmark/id` first), so states
synchronise across processes by concatenation and `compute` counts every id once: the duplicates that a
`DistributedSampler` pads in never count twice. Keys follow docs/contracts.md#metric-keys:
`pope/<category>/{accuracy,precision,recall,f1,yes_ratio}`, `pope/f1_mean` (fractions);
`mme/<subtask>/{acc,acc_plus,score}`, `mme/perception`, `mme/cognition` (official points);
`mmstar/<core>/accuracy`, `mmstar/<core>/<l2>/accuracy`, `mmstar/overall` (fractions).
`open` (and the shapes `scope` of any record) gets exact-match accuracy on the first word.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict

import torch
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from sinkflow.data.benchmarks.mme import COGNITION, PERCEPTION, SUBTASKS
from sinkflow.data.benchmarks.mmstar import CATEGORIES as MMSTAR_CATEGORIES
from sinkflow.data.benchmarks.pope import CATEGORIES as POPE_CATEGORIES
from sinkflow.data.collate import key_hash
from sinkflow.eval.parsing import check_rule, mmstar_correct, parse_mme, parse_pope

MMSTAR_CORES = tuple(MMSTAR_CATEGORIES)
MMSTAR_L2 = tuple(l2 for core in MMSTAR_CORES for l2 in MMSTAR_CATEGORIES[core])
_YES_NO = {"yes": 1, "no": 0, None: -1}


def record_hash(record: dict, field: str = "id") -> int:
    """A stable 63-bit key of `benchmark/<field>` (the same in every process and run)."""
    return key_hash(f"{record['benchmark']}/{record[field]}")


def _index(values: tuple[str, ...], value: str, what: str) -> int:
    if value not in values:
        raise ValueError(f"unknown {what} {value!r}; expected one of {values}")
    return values.index(value)


class RecordMetric(Metric):
    """Rows of int64 codes, one per question; `compute` sees each key (column 0) once."""

    full_state_update = False

    def __init__(self, rule: str = "official", **kwargs):
        super().__init__(**kwargs)
        self.rule = check_rule(rule)
        self.add_state("rows", default=[], dist_reduce_fx="cat")

    def encode(self, record: dict) -> list[int]:
        raise NotImplementedError

    def update(self, records: list[dict]) -> None:
        if records:
            self.rows.append(torch.tensor([self.encode(r) for r in records], dtype=torch.long, device=self.device))

    def unique_rows(self) -> torch.Tensor:
        """The rows, first occurrence of each key kept, in key order."""
        # A list of per-update tensors before sync, one gathered tensor after it.
        rows = dim_zero_cat(self.rows) if len(self.rows) else torch.zeros(0, 1, dtype=torch.long)
        keys, inverse = torch.unique(rows[:, 0], return_inverse=True)
        first = torch.full((len(keys),), len(rows), dtype=torch.long, device=rows.device)
        first = first.scatter_reduce(0, inverse, torch.arange(len(rows), device=rows.device), reduce="amin")
        return rows[first].cpu()


class POPEMetric(RecordMetric):
    """Per split accuracy, precision, recall, F1 (yes = positive) and yes-ratio of the predictions; mean F1."""

    def encode(self, record):
        answer = str(record["answer"]).lower()
        if answer not in ("yes", "no"):
            raise ValueError(f"POPE record {record['id']!r}: answer must be yes or no, got {record['answer']!r}")
        return [record_hash(record), _index(POPE_CATEGORIES, record["category"], "POPE category"),
                _YES_NO[answer], _YES_NO[parse_pope(record["prediction"], self.rule)]]

    def compute(self) -> dict[str, float]:
        rows, out, f1s = self.unique_rows(), {}, []
        for c, category in enumerate(POPE_CATEGORIES):
            part = rows[rows[:, 1] == c]
            if not len(part):
                continue
            gt, pred = part[:, 2], part[:, 3]
            tp, fp = int(((pred == 1) & (gt == 1)).sum()), int(((pred == 1) & (gt == 0)).sum())
            fn = int(((pred == 0) & (gt == 1)).sum())  # unparseable answers are in no cell, only wrong
            precision = tp / (tp + fp) if tp + fp else 0.0
            recall = tp / (tp + fn) if tp + fn else 0.0
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            out.update({f"pope/{category}/accuracy": int((pred == gt).sum()) / len(part),
                        f"pope/{category}/precision": precision, f"pope/{category}/recall": recall,
                        f"pope/{category}/f1": f1, f"pope/{category}/yes_ratio": int((pred == 1).sum()) / len(part)})
            f1s.append(f1)
        if f1s:
            out["pope/f1_mean"] = sum(f1s) / len(f1s)
        return out


class MMEMetric(RecordMetric):
    """Per subtask acc, acc+ (both questions of an image right) and score = acc + acc+; perception, cognition."""

    def encode(self, record):
        correct = parse_mme(record["prediction"], self.rule) == str(record["answer"]).lower()
        image = {"benchmark": "mme", "image": f"{record['category']}/{record['image']}"}
        return [record_hash(record), _index(SUBTASKS, record["category"], "MME subtask"),
                record_hash(image, "image"), int(correct)]

    def compute(self) -> dict[str, float]:
        rows, out = self.unique_rows(), {}
        for s, subtask in enumerate(SUBTASKS):
            part = rows[rows[:, 1] == s]
            if not len(part):
                continue
            images: dict[int, list[int]] = defaultdict(list)
            for image, correct in part[:, 2:].tolist():
                images[image].append(correct)
            # Fraction first, then x100, in the official tool's order (the last decimal depends on it).
            acc = int(part[:, 3].sum()) / len(part) * 100
            acc_plus = sum(all(v) for v in images.values()) / len(images) * 100
            out.update({f"mme/{subtask}/acc": acc, f"mme/{subtask}/acc_plus": acc_plus,
                        f"mme/{subtask}/score": acc + acc_plus})
        for name, group in (("perception", PERCEPTION), ("cognition", COGNITION)):
            scores = [out[f"mme/{s}/score"] for s in group if f"mme/{s}/score" in out]
            if scores:
                out[f"mme/{name}"] = sum(scores)
        return out


class MMStarMetric(RecordMetric):
    """Accuracy per core category, per sub-category and overall: micro (official, denominators from the data);
    under the `lmms_eval` rule its macro means (core = mean over its sub-categories; `mmstar/average`)."""

    def encode(self, record):
        return [record_hash(record), _index(MMSTAR_CORES, record["category"], "MMStar category"),
                _index(MMSTAR_L2, record["l2_category"], "MMStar l2_category"), int(mmstar_correct(record, self.rule))]

    def compute(self) -> dict[str, float]:
        rows, out = self.unique_rows(), {}
        l2_means: dict[int, float] = {}
        for l2 in rows[:, 2].unique().tolist():
            part = rows[rows[:, 2] == l2]
            l2_means[l2] = part[:, 3].float().mean().item()
            core = MMSTAR_L2[l2]
            out[f"mmstar/{MMSTAR_CORES[int(part[0, 1])]}/{core}/accuracy"] = l2_means[l2]
        for c, core in enumerate(MMSTAR_CORES):
            part = rows[rows[:, 1] == c]
            if not len(part):
                continue
            if self.rule == "lmms_eval":
                means = [l2_means[l2] for l2 in part[:, 2].unique().tolist()]
                out[f"mmstar/{core}/accuracy"] = sum(means) / len(means)
            else:
                out[f"mmstar/{core}/accuracy"] = int(part[:, 3].sum()) / len(part)
        if len(rows):
            out["mmstar/overall"] = int(rows[:, 3].sum()) / len(rows)
            if self.rule == "lmms_eval":
                out["mmstar/average"] = sum(l2_means.values()) / len(l2_means)
        return out


OFFICIAL_METRICS = {"pope": POPEMetric, "mme": MMEMetric, "mmstar": MMStarMetric}
# The benchmarks the scorer knows: the official three and the exact-match open questions (`load_open_qa`).
KNOWN_BENCHMARKS = (*OFFICIAL_METRICS, "open")


def benchmark_problem(name: str, allow_unknown: bool = False) -> str | None:
    """What is wrong with a record's benchmark name, or None. With `allow_unknown`, any name that can prefix its
    own metric keys is accepted ("all" and names with "/" would write into other keys)."""
    if name in KNOWN_BENCHMARKS:
        return None
    if not allow_unknown:
        return f"unknown benchmark {name!r}; expected one of {KNOWN_BENCHMARKS}"
    if not name or "/" in name or name == "all":
        return (f"an unknown benchmark's name prefixes its metric keys, so it must not be empty, 'all' or contain "
                f"'/', got {name!r}")
    return None


def normalise(text: str) -> str:
    """First word, lower-cased, without surrounding punctuation ("Yes." -> "yes", "(B) cat" -> "b")."""
    words = text.strip().split()
    return re.sub(r"^\W+|\W+$", "", words[0]).lower() if words else ""


def is_correct(record: dict, rule: str = "official") -> bool:
    """Whether a prediction is right under its benchmark's rule (first-word exact match for other benchmarks)."""
    if record["benchmark"] == "pope":
        return parse_pope(record["prediction"], rule) == str(record["answer"]).lower()
    if record["benchmark"] == "mme":
        return parse_mme(record["prediction"], rule) == str(record["answer"]).lower()
    if record["benchmark"] == "mmstar":
        return mmstar_correct(record, rule)
    return normalise(record["prediction"]) == normalise(str(record["answer"]))


def score_records(records: list[dict], rule: str = "official", allow_unknown: bool = False) -> dict[str, float]:
    """Every metric of a predictions file: the official benchmark metrics, plus exact-match accuracy for `open`
    and per `scope` (`<benchmark>/<scope>/accuracy`, `all/<scope>/accuracy`) where records have one.

    A benchmark outside KNOWN_BENCHMARKS is an error (a misspelt `popee` would otherwise be scored by exact match
    and mixed into `all/*`); with `allow_unknown` it is scored by exact match under its own name only."""
    by_benchmark: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        problem = benchmark_problem(record["benchmark"], allow_unknown)
        if problem:
            hint = "" if allow_unknown else "; allow_unknown scores it by first-word exact match, outside all/*"
            raise ValueError(f"record {record['id']!r}: benchmark: {problem}{hint}")
        by_benchmark[record["benchmark"]].append(record)
    out: dict[str, float] = {}
    hits: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for benchmark, group in by_benchmark.items():
        if benchmark in OFFICIAL_METRICS:
            # The records are already complete here (gathered on rank 0): no collective on compute.
            metric = OFFICIAL_METRICS[benchmark](rule, sync_on_compute=False)
            metric.update(group)
            out.update(metric.compute())
        seen = set()
        for record in group:
            if record["id"] in seen:
                continue
            seen.add(record["id"])
            ok = int(is_correct(record, rule))
            keys = [] if benchmark in OFFICIAL_METRICS else [f"{benchmark}/accuracy"] + (
                [f"{benchmark}/{record['category']}/accuracy"] if record.get("category") else [])
            if record.get("scope"):
                keys.append(f"{benchmark}/{record['scope']}/accuracy")
                if benchmark in KNOWN_BENCHMARKS:
                    keys.append(f"all/{record['scope']}/accuracy")
            for key in keys:
                hits[key][0] += ok
                hits[key][1] += 1
    out.update({key: correct / total for key, (correct, total) in hits.items()})
    out.update(routing_metrics(records))
    return dict(sorted(out.items()))


def routing_metrics(records: list[dict]) -> dict[str, float]:
    """A deciding strategy's choices (cot_route's `routing` field): the share of questions sent down each route,
    `routing/<route>`, and the mean time spent deciding, `routing/seconds_per_image` (each question has one image)."""
    decisions = {(r["benchmark"], str(r["id"])): r["routing"] for r in records if r.get("routing")}
    if not decisions:
        return {}
    routes = Counter(d["route"] for d in decisions.values())
    out = {f"routing/{route}": n / len(decisions) for route, n in routes.items()}
    seconds = [d["seconds"] for d in decisions.values() if "seconds" in d]
    if seconds:
        out["routing/seconds_per_image"] = sum(seconds) / len(seconds)
    return out


def multimodal_gain(with_image: dict[str, float], without_image: dict[str, float],
                    text_only: dict[str, float] | None = None, key: str = "mmstar/overall") -> dict[str, float]:
    """MMStar's MG = S_v - S_wv (the same LVLM with and without images) and, given the base LLM's text-only
    score S_t, ML = max(0, S_wv - S_t)."""
    for name, scores in (("with-image", with_image), ("without-image", without_image), ("text-only", text_only)):
        if scores is not None and key not in scores:
            raise ValueError(f"the {name} scores have no {key!r}: score MMStar predictions")
    out = {"mmstar/multimodal_gain": with_image[key] - without_image[key]}
    if text_only is not None:
        out["mmstar/leakage"] = max(0.0, without_image[key] - text_only[key])
    return out
