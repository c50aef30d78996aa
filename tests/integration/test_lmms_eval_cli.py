"""`lmms-eval --model sinkflow --model_args ckpt_path=...,sink_strategy=sink_front` as a user runs it (the console
script of .venv-lmms-eval, `make lmms-eval`), offline, on lmms-eval's own POPE task reading a few shapes questions from
local files."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from lmms_eval.tasks.pope import utils as pope_task

from sinkflow.benchmarks.pope import load_pope
from sinkflow.config import compose_config
from sinkflow.data.predictions import read_predictions
from sinkflow.eval.metrics import score_records
from sinkflow.integrations.lmms_eval import cut_at_stops
from sinkflow.run import train

pytestmark = pytest.mark.slow  # spawns lmms-eval

ROOT = Path(__file__).resolve().parents[2]
LMMS_EVAL = ROOT / ".venv-lmms-eval" / "bin" / "lmms-eval"
N_POPE = 8
# lmms-eval's POPE task, reading a JSON-lines file beside this YAML; its images are files, decoded by doc_to_visual.
TASK_YAML = """include: {pope_yaml}
task: sinkflow_pope
dataset_path: json
dataset_kwargs:
  data_files:
    test: {questions}
doc_to_visual: !function visuals.doc_to_visual
"""
VISUALS = """from PIL import Image


def doc_to_visual(doc):
    return [Image.open(doc["image_path"]).convert("RGB")]
"""


def write_task(folder: Path, items: list[dict]) -> None:
    folder.mkdir()
    with open(folder / "pope.jsonl", "w") as out:
        for item in items:
            doc = {k: item[k] for k in ("question_id", "question", "answer", "category", "image_path")}
            out.write(json.dumps(doc) + "\n")
    pope_yaml = Path(pope_task.__file__).with_name("pope.yaml")
    (folder / "sinkflow_pope.yaml").write_text(TASK_YAML.format(pope_yaml=pope_yaml, questions=folder / "pope.jsonl"))
    (folder / "visuals.py").write_text(VISUALS)


@pytest.mark.skipif(
    not LMMS_EVAL.exists(), reason=f"{LMMS_EVAL} is missing: `make lmms-eval` builds it (make test does)"
)
def test_lmms_eval_runs_a_local_task_through_a_trained_run_and_scores_it_as_sinkflow_does(tmp_path, hermetic_env):
    # A short run routed with sink_front (15 steps teach the tiny model POPE's answer format: it says "No"), tested on
    # shapes POPE alone within lmms-eval's POPE limit of 128 tokens: its predictions are evaluate.py's of last.ckpt.
    sets = compose_config([], config_name="train").dataset.eval_sets
    cfg = compose_config(
        [
            "sink_strategy=sink_front",
            "trainer.max_steps=15",
            "+trainer.limit_val_batches=0",
            "dataset.val_fraction=0",
            "logger=none",
            f"paths.data_dir={tmp_path / 'data'}",
            "dataset.prepare.n_train=64",
            "dataset.prepare.n_eval=6",
            *(f"~dataset.eval_sets.{name}" for name in sets if name != "pope"),
            f"dataset.limit_eval={N_POPE}",
            "+dataset.max_new_tokens.pope=128",
            f"paths.output_dir={tmp_path / 'run'}",
        ],
        config_name="train",
    )
    train(cfg)
    ours = {r["question_id"]: r for r in read_predictions(tmp_path / "run" / "predictions.jsonl")}
    root = Path(cfg.dataset.prepare.root)
    items = load_pope(root / "pope", root / "eval_images")[:N_POPE]
    assert {item["question_id"] for item in items} == set(ours) and {i["category"] for i in items} == {"random"}

    write_task(tmp_path / "task", items)
    args = f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'last.ckpt'},sink_strategy=sink_front"
    command = [str(LMMS_EVAL), "--model", "sinkflow", "--model_args", args, "--tasks", "sinkflow_pope"]
    command += ["--include_path", str(tmp_path / "task"), "--batch_size", "3", "--device", "cpu"]
    command += ["--output_path", str(tmp_path / "out"), "--log_samples"]
    env = {**os.environ, **hermetic_env, "HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"lmms-eval failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    assert "sinkflow_pope" in proc.stdout and "pope_accuracy" in proc.stdout  # its results table

    [results_file] = (tmp_path / "out").rglob("*_results.json")
    [samples_file] = (tmp_path / "out").rglob("*_samples_sinkflow_pope.jsonl")
    reported = json.loads(results_file.read_text())["results"]["sinkflow_pope"]
    samples = [json.loads(line) for line in samples_file.read_text().splitlines()]
    answered = {items[sample["doc_id"]]["question_id"]: sample["filtered_resps"] for sample in samples}  # one each
    # The run's own answers (cut at the task's default stop string, "\n\n") ...
    assert answered == {qid: cut_at_stops(record["prediction"], ["\n\n"]) for qid, record in ours.items()}
    # ... scored as sinkflow scores them under lmms-eval's answer rules (the yes-ratio differs: test_lmms_eval.py).
    scored = score_records([dict(ours[qid], prediction=answer) for qid, answer in answered.items()], parser="lmms_eval")
    for lmms_key, key in (
        ("accuracy", "accuracy"),
        ("precision", "precision"),
        ("recall", "recall"),
        ("f1_score", "f1"),
    ):
        assert reported[f"pope_{lmms_key},none"] == pytest.approx(scored[f"pope/random/{key}"]), lmms_key
    assert reported["pope_accuracy,none"] > 0  # some answers are right: the equality is not 0 = 0
