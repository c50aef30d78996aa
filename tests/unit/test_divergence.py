"""A diverging run stops before the bad update, names the step, loss and groups, and writes nothing non-finite."""

import re

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from sinkflow.data.datamodule import LVLMDataModule
from sinkflow.data.templates import VicunaV1
from sinkflow.divergence import DivergenceGuard, NonFiniteWeights, TrainingDiverged
from sinkflow.models.build import LoraSpec, prepare_for_training
from sinkflow.models.export import export_trainable
from sinkflow.models.families.llava import LlavaFamily
from sinkflow.models.tiny import TinyLlavaSpec, build_tiny_llava
from sinkflow.module import OptimSpec, SinkflowModule
from sinkflow.sinks.strategies.none import NoneStrategy


class NanAtSteps(SinkflowModule):
    """Its loss is NaN at the given optimizer steps (the weights stay finite)."""

    nan_steps: tuple[int, ...] = ()

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * float("nan") if self.global_step in self.nan_steps else loss


def tiny_module(lr: float, cls=SinkflowModule) -> SinkflowModule:
    model, processor = build_tiny_llava(TinyLlavaSpec())
    family = LlavaFamily()
    model = prepare_for_training(model, family, lora=LoraSpec(r=2, alpha=4, dropout=0.0))
    return cls(model, processor, family, NoneStrategy(), optim=OptimSpec(lr=lr, projector_lr=lr, warmup_ratio=0.0))


def fit(module, shapes_root, tmp_path, guard: DivergenceGuard, *callbacks, max_steps: int = 6) -> L.Trainer:
    data = LVLMDataModule(
        str(shapes_root / "train.json"), str(shapes_root), batch_size=4, val_fraction=0.0, limit_train=32
    ).bind(module.processor, VicunaV1())
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True, every_n_train_steps=1, save_top_k=0)
    trainer = L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[guard, checkpoints, *callbacks],
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=data)
    return trainer


def snapshot(module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.trainable_state_dict().items()}


def test_a_huge_learning_rate_stops_training_before_the_non_finite_update(shapes_root, tmp_path):
    L.seed_everything(0)
    module = tiny_module(lr=1e6)
    with pytest.raises(TrainingDiverged) as error:
        fit(module, shapes_root, tmp_path, DivergenceGuard())
    message = str(error.value)
    step = int(re.match(r"training diverged at step (\d+) \(epoch 0\): train/loss = ", message).group(1))
    assert step >= 1 and re.search(r"non-finite gradients in parameter group\(s\) (lora|projector)", message)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert f"the last checkpoint, with finite weights, is {last}" in message
    assert "divergence.max_bad_steps=N" in message
    saved = torch.load(last, map_location="cpu", weights_only=True)
    assert saved["global_step"] == step
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values())
    # The bad step's update was not applied: the weights are the last checkpoint's.
    assert all(torch.equal(v, saved["state_dict"][k]) for k, v in module.trainable_state_dict().items())


def test_bad_steps_within_the_budget_are_skipped_then_training_stops(shapes_root, tmp_path):
    L.seed_everything(0)
    module = tiny_module(lr=1e-3, cls=NanAtSteps)
    module.nan_steps = (2, 4)
    before_skip = {}

    class Watch(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            before_skip[trainer.global_step] = snapshot(pl_module)

    with pytest.raises(
        TrainingDiverged,
        match=r"at step 4 \(epoch 0\) after skipping 1 bad step\(s\): "
        r"train/loss = nan; non-finite gradients in parameter group\(s\) "
        r"lora, projector",
    ):
        fit(module, shapes_root, tmp_path / "one", DivergenceGuard(max_bad_steps=1), Watch())
    # Step 2's update was dropped (the weights entering step 3 are those entering step 2); step 1's was applied.
    assert all(torch.equal(before_skip[2][k], before_skip[3][k]) for k in before_skip[2])
    assert not all(torch.equal(before_skip[1][k], before_skip[2][k]) for k in before_skip[1])

    L.seed_everything(0)
    module = tiny_module(lr=1e-3, cls=NanAtSteps)
    module.nan_steps = (2, 4)
    trainer = fit(module, shapes_root, tmp_path / "two", DivergenceGuard(max_bad_steps=2))
    assert trainer.global_step == 6 and all(torch.isfinite(v).all() for v in module.trainable_state_dict().values())


def test_no_checkpoint_or_export_is_written_with_non_finite_weights(tmp_path):
    module = tiny_module(lr=1e-3)
    name, parameter = next((n, p) for n, p in module.named_parameters() if p.requires_grad and "lora_B" in n)
    with torch.no_grad():
        parameter[0, 0] = float("inf")
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, max_steps=1)
    trainer.strategy.connect(module)
    with pytest.raises(
        NonFiniteWeights,
        match=rf"refusing to write a checkpoint at step 0: non-finite values in "
        rf"{re.escape(name)}",
    ):
        trainer.save_checkpoint(tmp_path / "bad.ckpt")
    assert not (tmp_path / "bad.ckpt").exists()
    with pytest.raises(NonFiniteWeights, match=r"refusing to write .*adapter: non-finite values in .*lora_B"):
        export_trainable(module, tmp_path / "export")
    assert not (tmp_path / "export").exists()
