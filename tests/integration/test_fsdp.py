"""`trainer=fsdp` (FSDP2 through Lightning's ModelParallelStrategy) on 2 gloo processes: the same losses and the same
trainable-only checkpoint and export as DDP, with activation checkpointing too, and an exact resume."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow  # train.py in 2 processes, five times

COMMON = [
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "dataset.prepare.n_train=32",
    "dataset.prepare.n_eval=6",
    "dataset.batch_size=4",
    "logger=none",
    "test=false",
]
DDP = ["trainer=ddp", "trainer.precision=32-true"]
FSDP = ["trainer=fsdp", "trainer.strategy.param_dtype=null"]  # float32 on the CPU, as the DDP run
EXPORTED = ["projector.safetensors", "strategy.safetensors", "adapter/adapter_model.safetensors"]


def train(out: Path, args: list[str], entry_point) -> dict:
    """Run train.py into `out`; its training and validation losses."""
    entry_point("train.py", [*COMMON, *args, f"hydra.run.dir={out}"], out.parent)
    curves = json.loads((out / "loss_curves.json").read_text())
    return {"train": dict(zip(curves["train"]["step"], curves["train"]["loss"])), "val": curves["val"]["loss"]}


def assert_same_export(a: Path, b: Path) -> None:
    assert sorted(p.name for p in (a / "checkpoints" / "export").iterdir()) == sorted(
        p.name for p in (b / "checkpoints" / "export").iterdir()
    )
    for name in EXPORTED:
        left, right = (load_file(run / "checkpoints" / "export" / name) for run in (a, b))
        assert left.keys() == right.keys(), name
        for key in left:
            torch.testing.assert_close(left[key], right[key], atol=1e-6, rtol=1e-5, msg=f"{name}: {key}")


def test_fsdp_trains_as_ddp_saves_the_same_trainable_weights_and_resumes_exactly(tmp_path, entry_point):
    ddp = train(tmp_path / "ddp", DDP, entry_point)
    fsdp = train(tmp_path / "fsdp", FSDP, entry_point)
    assert len(ddp["train"]) == 4
    for run in (fsdp,):
        assert run["train"].keys() == ddp["train"].keys()
        torch.testing.assert_close(list(run["train"].values()), list(ddp["train"].values()), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(run["val"], ddp["val"], atol=1e-5, rtol=1e-5)
    assert_same_export(tmp_path / "fsdp", tmp_path / "ddp")
    # The checkpoint holds the trainable weights only, whole, as DDP's does.
    saved = [torch.load(tmp_path / r / "checkpoints" / "last.ckpt", weights_only=True) for r in ("fsdp", "ddp")]
    assert saved[0]["state_dict"].keys() == saved[1]["state_dict"].keys()
    assert not any(k.endswith("base_layer.weight") for k in saved[0]["state_dict"])  # no frozen weight
    # Activation checkpointing changes nothing but memory, under DDP and under FSDP.
    for name, strategy in (("ddp_checkpointing", DDP), ("fsdp_checkpointing", FSDP)):
        run = train(tmp_path / name, [*strategy, "model.gradient_checkpointing=true"], entry_point)
        torch.testing.assert_close(list(run["train"].values()), list(ddp["train"].values()), atol=1e-5, rtol=1e-5)
    # Resumed from the step-2 checkpoint, the run goes on exactly as the uninterrupted one.
    (step_2,) = (tmp_path / "fsdp" / "checkpoints").glob("epoch_*-step_000002.ckpt")
    resumed = train(tmp_path / "resumed", [*FSDP, f"ckpt_path={step_2}"], entry_point)
    assert list(resumed["train"]) == [3, 4]
    torch.testing.assert_close(
        list(resumed["train"].values()), [fsdp["train"][3], fsdp["train"][4]], atol=1e-6, rtol=1e-6
    )
    assert_same_export(tmp_path / "resumed", tmp_path / "fsdp")
