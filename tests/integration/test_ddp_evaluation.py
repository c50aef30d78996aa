"""Evaluation under DDP (2 CPU processes, gloo) equals single-process evaluation exactly."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from sinkflow.data.predictions import read_predictions
from sinkflow.eval.callback import RUN_MEASURES

pytestmark = pytest.mark.slow  # two processes (DDP, gloo) running evaluate.py / train.py

ROOT = Path(__file__).resolve().parents[2]
# 7 questions per set of POPE, MME and MMStar (every other shapes set left out), 21 in all, batch 4: an odd count,
# so the distributed sampler pads with duplicates that must not count.
KEPT = ("pope", "mme", "mmstar")
ARGS = [
    "dataset.prepare.n_train=8",
    "dataset.prepare.n_eval=4",
    "dataset.limit_eval=7",
    "dataset.eval_batch_size=4",
    *(
        f"~dataset.eval_sets.{name}"
        for name in OmegaConf.load(ROOT / "conf/dataset/shapes.yaml").eval_sets
        if name not in KEPT
    ),
]


def evaluate(out, extra, tmp_path, env, args=ARGS):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "evaluate.py"), *args, *extra, f"hydra.run.dir={out}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    records = {(r["benchmark"], r["id"]): r for r in read_predictions(out / "predictions.jsonl")}
    metrics = json.loads((out / "metrics.json").read_text())
    measures = {k: metrics.pop(k) for k in list(metrics) if k.startswith(RUN_MEASURES)}  # per process
    assert measures["throughput/questions_per_second"] > 0 and measures["throughput/seconds"] > 0
    assert measures["efficiency/visual_tokens"] > 0 and measures["efficiency/kv_cache_mb"] > 0
    return records, metrics, proc.stdout + proc.stderr


def test_ddp_predictions_and_metrics_equal_single_process(tmp_path, hermetic_env, wandb_offline_runs):
    env = {**os.environ, **hermetic_env, "SINKFLOW_ROOT": str(tmp_path)}
    single, single_metrics, _ = evaluate(tmp_path / "single", [], tmp_path, env)
    ddp, ddp_metrics, log = evaluate(
        tmp_path / "ddp",
        ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true", "logger=wandb"],
        tmp_path,
        env,
    )
    assert "MEMBER: 2/2" in log, "the DDP run must really use two processes"
    (run,) = wandb_offline_runs(tmp_path / "ddp" / "wandb")  # rank 0's alone, finished, with the scores
    assert run.exit_code == 0 and run.job_type == "evaluate" and "test/pope/f1_mean" in run.logged
    assert len(single) == 21
    assert len(read_predictions(tmp_path / "ddp" / "predictions.jsonl")) == 21  # no padded duplicates written
    assert ddp == single
    assert ddp_metrics == single_metrics


def test_every_benchmark_scores_the_same_through_evaluate_ddp_and_the_scoring_cli(tmp_path, hermetic_env):
    """Every shapes set (one per registered benchmark format, MMMU's two-image questions included): the metrics of a
    2-process evaluation equal a single process's, and the scoring CLI gives the same scores from the file."""
    from sinkflow.eval.score import main as score_main

    env = {**os.environ, **hermetic_env, "SINKFLOW_ROOT": str(tmp_path)}
    args = [
        "dataset.prepare.n_train=8",
        "dataset.prepare.n_eval=4",
        "dataset.limit_eval=3",
        "dataset.eval_batch_size=4",
    ]
    ddp_args = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true"]
    single, single_metrics, _ = evaluate(tmp_path / "single", [], tmp_path, env, args)
    ddp, ddp_metrics, log = evaluate(tmp_path / "ddp", ddp_args, tmp_path, env, args)
    assert "MEMBER: 2/2" in log
    sets = OmegaConf.load(ROOT / "conf/dataset/shapes.yaml").eval_sets
    assert {benchmark for benchmark, _ in single} == set(sets) and ddp == single
    assert ddp_metrics == single_metrics
    rescored = score_main([str(tmp_path / "ddp" / "predictions.jsonl")])
    assert rescored == {key: value for key, value in ddp_metrics.items() if not key.startswith("sinks/")}


def test_ddp_training_runs_on_two_processes_and_tests_every_question_once(tmp_path, hermetic_env):
    import torch

    env = {**os.environ, **hermetic_env, "SINKFLOW_ROOT": str(tmp_path)}
    out = tmp_path / "train"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.precision=32-true",
            "trainer.max_steps=4",
            "trainer.max_epochs=10",
            "logger=csv",
            "dataset.batch_size=4",
            *ARGS,
            f"hydra.run.dir={out}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "MEMBER: 2/2" in proc.stdout + proc.stderr
    checkpoint = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 4
    assert (out / "checkpoints" / "export" / "projector.safetensors").exists()
    records = read_predictions(out / "predictions.jsonl")
    assert len(records) == len({(r["benchmark"], r["id"]) for r in records}) == 21
