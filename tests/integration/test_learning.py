"""Learning works, and the exported adapter + projector reproduce sinkflow's logits in plain transformers/peft."""

import lightning as L
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import LlavaForConditionalGeneration

from sinkflow.data.datamodule import LVLMDataModule
from sinkflow.data.templates import VicunaV1
from sinkflow.models.build import LoraSpec, load_pretrained, prepare_for_training
from sinkflow.models.export import export_trainable, load_export
from sinkflow.models.families.llava import LlavaFamily
from sinkflow.module import OptimSpec, SinkflowModule
from sinkflow.sinks.strategies.none import NoneStrategy

pytestmark = pytest.mark.slow  # trains 200 steps (the export test reuses that run)


class LossRecorder(L.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


@pytest.fixture(scope="module")
def trained(tiny_checkpoint, shapes_root, tmp_path_factory):
    """200 LoRA steps on 32 shapes conversations through the Lightning trainer."""
    L.seed_everything(0)
    model, processor = load_pretrained(tiny_checkpoint)
    family = LlavaFamily()
    model = prepare_for_training(model, family, lora=LoraSpec(r=8, alpha=16, dropout=0.0))
    module = SinkflowModule(
        model,
        processor,
        family,
        NoneStrategy(),
        optim=OptimSpec(lr=3e-3, projector_lr=3e-3, warmup_ratio=0.03),
        source=tiny_checkpoint,
    )
    data = LVLMDataModule(
        str(shapes_root / "train.json"), str(shapes_root), batch_size=8, val_fraction=0.0, limit_train=32
    ).bind(processor, VicunaV1())
    recorder = LossRecorder()
    trainer = L.Trainer(
        max_steps=200,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[recorder],
        default_root_dir=tmp_path_factory.mktemp("fit"),
    )
    trainer.fit(module, datamodule=data)
    return module.eval(), data, recorder.losses


def test_training_loss_falls_by_80_percent_within_200_steps(trained):
    _, data, losses = trained
    assert len(data.train_set) == 32 and len(losses) == 200
    first = sum(losses[:4]) / 4  # one pass over the 32 samples
    last = sum(losses[-4:]) / 4
    assert last <= 0.2 * first, f"loss {first:.3f} -> {last:.3f}"


def test_export_reloads_in_plain_transformers_and_peft(trained, tiny_checkpoint, tmp_path):
    module, data, _ = trained
    out = export_trainable(module, tmp_path / "export")
    assert sorted(p.name for p in out.iterdir()) == ["adapter", "export.json", "projector.safetensors"]

    plain = LlavaForConditionalGeneration.from_pretrained(tiny_checkpoint).eval()
    untrained_logits = None
    batch = data._collator(generate=False)(data.train_set[:2])
    with torch.no_grad():
        untrained_logits = plain(**{k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}).logits
        plain.model.multi_modal_projector.load_state_dict(load_file(out / "projector.safetensors"))
        plain = PeftModel.from_pretrained(plain, out / "adapter").eval()
        theirs = plain(**{k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}).logits
        ours = module(batch).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert not torch.allclose(ours, untrained_logits, atol=1e-3), "training must have changed the model"

    reloaded = load_export(LlavaForConditionalGeneration.from_pretrained(tiny_checkpoint).eval(), out)
    with torch.no_grad():
        again = reloaded(**{k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}).logits
    torch.testing.assert_close(again, theirs, atol=0, rtol=0)
