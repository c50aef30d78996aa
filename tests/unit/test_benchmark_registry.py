"""Benchmarks are found through their registry: a new one is one module, and the dataset configs load exactly the
registered ones."""

import importlib
import json
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from sinkflow.benchmarks.base import BENCHMARKS
from sinkflow.data.errors import DataFormatError
from sinkflow.data.predictions import read_predictions
from sinkflow.eval.benchmark_scores import BenchmarkScores
from sinkflow.eval.metrics import score_records

ROOT = Path(__file__).resolve().parents[2]

TOY_MODULE = '''
"""A toy benchmark: colour questions, right when the prediction names the colour anywhere."""
from pathlib import Path

from sinkflow.benchmarks.base import Benchmark
from sinkflow.data.files import field, read_jsonl


def load_toy(path):
    return [{{"benchmark": "toy", "id": str(field(obj, "n", int, Path(path), line)), "question": obj["q"],
             "answer": obj["colour"], "shade": obj["shade"], "scope": "global", "prompt": obj["q"]}}
            for line, obj in read_jsonl(Path(path))]


class Toy(Benchmark, name="toy"):
    counts_in_all = {counts_in_all}
    fields = ("shade",)

    @staticmethod
    def correct(record, parser):
        return record["answer"] in record["prediction"].lower()

    @classmethod
    def score(cls, records, parser):
        right = [cls.correct(r, parser) for r in records]
        return {{"toy/hits": float(sum(right)), "toy/dark/hits": float(sum(
            ok for ok, r in zip(right, records) if r["shade"] == "dark"))}}
'''


@pytest.fixture
def toy_benchmark(tmp_path, monkeypatch, request):
    """Import a benchmark module written outside the package; the registry is restored afterwards."""
    BENCHMARKS.discover()
    monkeypatch.setattr(BENCHMARKS, "_entries", dict(BENCHMARKS._entries))
    (tmp_path / "toy_benchmark.py").write_text(TOY_MODULE.format(counts_in_all=request.param))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        yield importlib.import_module("toy_benchmark")
    finally:
        sys.modules.pop("toy_benchmark", None)


@pytest.mark.parametrize("toy_benchmark", [True, False], indirect=True)
def test_a_benchmark_module_outside_the_package_is_scored_under_its_own_name(toy_benchmark, tmp_path):
    questions = tmp_path / "toy.jsonl"
    questions.write_text(
        "".join(
            json.dumps({"n": n, "q": "Which colour?", "colour": colour, "shade": shade}) + "\n"
            for n, (colour, shade) in enumerate([("red", "dark"), ("blue", "dark"), ("green", "light")])
        )
    )
    records = [
        dict(item, prediction=prediction)
        for item, prediction in zip(toy_benchmark.load_toy(questions), ["It is red.", "Green", "green"])
    ]
    pope = {
        "benchmark": "pope",
        "id": "random/1",
        "category": "random",
        "question": "q",
        "answer": "yes",
        "prediction": "No",
        "prompt": "p",
        "scope": "global",
    }
    scores = score_records(records + [pope])
    metric = BenchmarkScores()
    metric.update(records[:1])
    metric.update(records[1:] + [pope])
    assert metric.compute() == scores
    assert {k: v for k, v in scores.items() if k.startswith(("toy/", "all/"))} == {
        "toy/hits": 2.0,
        "toy/dark/hits": 1.0,
        "toy/global/accuracy": 2 / 3,
        # POPE's record is wrong; the toy's right answers count here only when its class says so
        "all/global/accuracy": 2 / 4 if toy_benchmark.Toy.counts_in_all else 0.0,
    }
    # The predictions file checks the fields the toy declares.
    path = tmp_path / "predictions.jsonl"
    path.write_text(json.dumps({k: v for k, v in records[0].items() if k != "shade"}) + "\n")
    with pytest.raises(DataFormatError, match="shade: missing field"):
        read_predictions(path)


def eval_set_targets(config: str) -> dict[str, str]:
    """Evaluation set name -> its loader's `_target_` in conf/dataset/<config>.yaml."""
    sets = OmegaConf.load(ROOT / "conf" / "dataset" / f"{config}.yaml").get("eval_sets") or {}
    return {name: spec["_target_"] for name, spec in sets.items()}


def test_the_dataset_configs_and_the_registry_agree():
    """Every configured loader lives in the module of the registered benchmark it is named after, and every
    registered benchmark has a loader in benchmarks.yaml unless its class says it is shapes-only."""
    configs = sorted(p.stem for p in (ROOT / "conf" / "dataset").glob("*.yaml"))
    targets = {config: eval_set_targets(config) for config in configs}
    assert {"benchmarks", "benchmarks_hf", "shapes"} <= {c for c, t in targets.items() if t}
    checked = 0
    for config, loaders in targets.items():
        for name, target in loaders.items():
            module, function = target.rsplit(".", 1)
            assert callable(getattr(importlib.import_module(module), function)), f"{config}: {target}"
            assert name in BENCHMARKS and BENCHMARKS[name].__module__ == module, f"{config}: {name} -> {target}"
            checked += 1
    assert checked >= len(BENCHMARKS) >= 4
    release = {name for name, cls in BENCHMARKS.items() if not cls.shapes_only}
    assert release and set(eval_set_targets("benchmarks")) == release
    assert set(BENCHMARKS) - release <= set(eval_set_targets("shapes"))  # their only source
