"""Resume is exact: `train.py` killed with SIGKILL mid-epoch and resumed from its `last.ckpt` ends with the weights,
optimizer, scheduler and RNG states of a run never interrupted, bit for bit, and logs the same losses at the same
steps (no batch or validation repeated or skipped)."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # every test runs train.py in subprocesses

ROOT = Path(__file__).resolve().parents[2]
# 30 training conversations in batches of 8: 4 steps per epoch, a validation every 2 steps; 14 steps = 3.5 epochs.
ARGS = [
    "dataset.prepare.n_train=32",
    "dataset.prepare.n_eval=6",
    "dataset.batch_size=8",
    "trainer.max_steps=14",
    "trainer.val_check_interval=2",
    "trainer.log_every_n_steps=1",
    "model.lora.dropout=0.1",  # dropout draws from the global RNG: its state must be restored exactly
    "callbacks.last_checkpoint.every_n_train_steps=5",  # step 5: epoch 1, batch 1; step 10: after a validation
    "callbacks.model_checkpoint.save_top_k=-1",  # every validation's checkpoint, to resume from
    "~callbacks.benchmark_validation",
    "logger=csv",
    "test=false",
]


@pytest.fixture(scope="module")
def env(tmp_path_factory, hermetic_env):
    """One root for every run of the module: the data and the tiny model are made once."""
    root = tmp_path_factory.mktemp("resume")
    return {**os.environ, **hermetic_env, "SINKFLOW_ROOT": str(root), "HYDRA_FULL_ERROR": "1"}


def train(args: list[str], run_dir: Path, env: dict) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *ARGS, *args, f"hydra.run.dir={run_dir}"],
        cwd=env["SINKFLOW_ROOT"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"train.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"


@pytest.fixture(scope="module")
def uninterrupted(env) -> Path:
    run_dir = Path(env["SINKFLOW_ROOT"]) / "uninterrupted"
    train([], run_dir, env)
    return run_dir


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def logged(run_dir: Path, version: int) -> dict[str, dict[int, str]]:
    """{metric: {step: value as written}} of train/loss, val/loss and the LoRA learning rate."""
    rows = list(csv.DictReader((run_dir / "csv" / f"version_{version}" / "metrics.csv").read_text().splitlines()))
    return {
        key: {int(r["step"]): r[key] for r in rows if r.get(key)} for key in ("train/loss", "val/loss", "lr-AdamW/lora")
    }


def assert_equal(a, b, where: str) -> None:
    if isinstance(b, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(b, dict):
        assert a.keys() == b.keys(), where
        for key in b:
            assert_equal(a[key], b[key], f"{where}.{key}")
    elif isinstance(b, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_end(resumed_dir: Path, reference_dir: Path) -> None:
    """The final checkpoints: every trainable tensor bit-equal, and the optimizer, scheduler, step and every
    process's RNG states equal."""
    resumed, reference = (load(d / "checkpoints" / "last.ckpt") for d in (resumed_dir, reference_dir))
    assert resumed["state_dict"].keys() == reference["state_dict"].keys()
    delta = {k: (resumed["state_dict"][k] - v).abs().max().item() for k, v in reference["state_dict"].items()}
    worst = max(delta, key=delta.get)
    assert delta[worst] == 0, f"max |delta| = {delta[worst]:.3g} ({worst})"
    for key in ("global_step", "epoch", "optimizer_states", "lr_schedulers"):
        assert_equal(resumed[key], reference[key], key)
    assert_equal(resumed["callbacks"]["RandomState"], reference["callbacks"]["RandomState"], "RNG states")


def assert_same_log_from(step: int, resumed: dict, reference: dict) -> None:
    """A run resumed at global step `step` logs what the uninterrupted one logged from there on (CSV rows carry the
    step before the batch or validation): no batch or validation repeated or skipped."""
    for key, values in reference.items():
        assert resumed[key] == {s: v for s, v in values.items() if s >= step}, key


def kill_after_first_last_checkpoint(run_dir: Path, env: dict) -> int:
    """Start train.py and SIGKILL it as soon as `last.ckpt` exists; the step that checkpoint holds."""
    last, log = run_dir / "checkpoints" / "last.ckpt", Path(env["SINKFLOW_ROOT"]) / "killed.log"
    with open(log, "w") as output:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "train.py"), *ARGS, f"hydra.run.dir={run_dir}"],
            cwd=env["SINKFLOW_ROOT"],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            while not last.exists():  # it appears whole: Lightning renames a finished temporary file
                assert proc.poll() is None, f"train.py ended (rc {proc.returncode}) before last.ckpt: {log}"
                time.sleep(0.02)
        finally:
            proc.send_signal(signal.SIGKILL)  # kill -9 (nothing if it has ended)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return load(last)["global_step"]


def test_a_run_killed_mid_epoch_resumes_to_the_end_of_the_uninterrupted_run(uninterrupted, env):
    run_dir = Path(env["SINKFLOW_ROOT"]) / "killed"
    step = kill_after_first_last_checkpoint(run_dir, env)
    assert step in (5, 10), step  # mid-epoch, with an epoch boundary ahead
    assert not (run_dir / "checkpoints" / "export").exists(), "killed before fit ended"
    # As a user resumes: the same command and run directory, with ckpt_path.
    train([f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"], run_dir, env)
    assert_same_end(run_dir, uninterrupted)
    assert_same_log_from(step, logged(run_dir, version=1), logged(uninterrupted, version=0))


def test_a_run_resumed_from_a_mid_epoch_validation_checkpoint_ends_as_the_uninterrupted_run(uninterrupted, env):
    run_dir = Path(env["SINKFLOW_ROOT"]) / "from_validation"
    train([f"ckpt_path={uninterrupted / 'checkpoints' / 'epoch_001-step_000006.ckpt'}"], run_dir, env)
    assert_same_end(run_dir, uninterrupted)
    assert_same_log_from(6, logged(run_dir, version=0), logged(uninterrupted, version=0))


def test_a_run_resumed_from_an_epoch_end_checkpoint_ends_as_the_uninterrupted_run(env):
    once_per_epoch = ["trainer.val_check_interval=1.0"]  # the best checkpoint is written when an epoch ends
    reference, run_dir = (Path(env["SINKFLOW_ROOT"]) / name for name in ("epochwise", "from_epoch_end"))
    train(once_per_epoch, reference, env)
    train([*once_per_epoch, f"ckpt_path={reference / 'checkpoints' / 'epoch_000-step_000004.ckpt'}"], run_dir, env)
    assert_same_end(run_dir, reference)
    assert_same_log_from(4, logged(run_dir, version=0), logged(reference, version=0))
