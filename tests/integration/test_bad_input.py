"""Entry points on bad input and faults, as a user meets them: one clear error, a non-zero exit, nothing written
that should not be."""

import subprocess
import sys

import pytest
import torch

from test_entry_points import ROOT, SMALL_DATA

sys.path.insert(0, str(ROOT / "tests" / "unit"))
from test_checkpoint import malicious_checkpoint  # noqa: E402

pytestmark = pytest.mark.slow  # every test runs train.py or evaluate.py in a subprocess


def fails(script, args, cwd, env) -> str:
    """Run an entry point that must fail; its stderr."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / script), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode != 0, f"{script} succeeded:\n{proc.stdout[-3000:]}"
    return proc.stderr


@pytest.mark.parametrize("script", ["train.py", "evaluate.py"])
def test_a_checkpoint_that_would_run_code_is_refused_by_both_entry_points(script, tmp_path, env):
    marker = tmp_path / "marker"
    path = malicious_checkpoint(tmp_path / "evil.ckpt", marker)
    stderr = fails(script, [f"ckpt_path={path}", *SMALL_DATA, f"hydra.run.dir={tmp_path / 'out'}"], tmp_path, env)
    assert f"{path}: refused: loading it would call " in stderr and "never runs code from a checkpoint" in stderr
    assert not marker.exists()


@pytest.mark.parametrize("script", ["train.py", "evaluate.py"])
def test_a_file_that_is_not_a_checkpoint_gets_one_line(script, tmp_path, env):
    path = tmp_path / "notes.ckpt"
    path.write_text("not a checkpoint\n")
    stderr = fails(script, [f"ckpt_path={path}", *SMALL_DATA, f"hydra.run.dir={tmp_path / 'out'}"], tmp_path, env)
    assert (
        f"\nsinkflow.models.checkpoint.CheckpointError: {path}: not a readable checkpoint (UnpicklingError: "
        "Unsupported operand 110); expected a sinkflow checkpoint (a run's checkpoints/last.ckpt, written by "
        "train.py) or, for evaluate.py, its export directory (checkpoints/export/)\n"
    ) in stderr


def test_a_diverging_run_stops_exits_non_zero_and_keeps_only_finite_weights(tmp_path, env):
    out = tmp_path / "run"
    stderr = fails(
        "train.py",
        [
            "logger=none",
            "model.optim.lr=1e6",
            "model.optim.projector_lr=1e6",
            "trainer.max_steps=20",
            "callbacks.last_checkpoint.every_n_train_steps=1",
            *SMALL_DATA,
            f"hydra.run.dir={out}",
        ],
        tmp_path,
        env,
    )
    assert "TrainingDiverged: training diverged at step " in stderr and "non-finite gradients" in stderr
    assert f"the last checkpoint, with finite weights, is {out / 'checkpoints' / 'last.ckpt'}" in stderr
    checkpoints = sorted((out / "checkpoints").glob("*.ckpt"))
    assert checkpoints, "the checkpoint of the last good step is kept"
    for path in checkpoints:
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values()), path
    # Nothing after the stop: no export of broken weights, no test on them.
    assert not (out / "checkpoints" / "export").exists()
    assert not (out / "metrics.json").exists() and not (out / "predictions.jsonl").exists()


def test_an_empty_benchmark_file_is_an_error_naming_it(tmp_path, env, other_eval_sets):
    pope = tmp_path / "pope"
    pope.mkdir()
    (pope / "coco_pope_random.json").write_text("")
    out = tmp_path / "out"
    stderr = fails(
        "evaluate.py",
        [
            "dataset=benchmarks",
            f"dataset.eval_sets.pope.paths={pope}",
            f"dataset.eval_sets.pope.image_root={tmp_path}",
            *other_eval_sets("benchmarks", keep="pope"),
            f"hydra.run.dir={out}",
        ],
        tmp_path,
        env,
    )
    assert f"{pope / 'coco_pope_random.json'}: <file>: no questions: the file holds none" in stderr
    assert not (out / "metrics.json").exists()


def test_a_local_checkpoint_path_that_does_not_exist_is_not_sent_to_the_hub(tmp_path, env):
    stderr = fails(
        "evaluate.py",
        [f"model.checkpoint={tmp_path / 'no' / 'such' / 'model'}", *SMALL_DATA, f"hydra.run.dir={tmp_path / 'out'}"],
        tmp_path,
        env,
    )
    assert f"model.checkpoint={tmp_path / 'no' / 'such' / 'model'}: no such directory" in stderr
    assert "hf download" not in stderr


def test_a_numeric_option_out_of_range_names_its_key(tmp_path, env):
    stderr = fails(
        "train.py", ["sink_strategy.detector.tau=-1", *SMALL_DATA, f"hydra.run.dir={tmp_path / 'out'}"], tmp_path, env
    )
    assert "`sink_strategy.detector.tau` must be a number > 0, got -1" in stderr
