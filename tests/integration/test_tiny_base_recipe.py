"""`make tiny-base` at toy scale: the recipe (experiment=tiny_base) runs both stages through train.py, and the bake
turns the run into an HF checkpoint that plain transformers loads, holding every trained weight, the ViT included."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

from sinkflow.models.tiny_base import INFO, WEIGHTS, bake, sha256, tiny_base_checkpoint
from test_entry_points import run

pytestmark = pytest.mark.slow  # train.py in a subprocess

TOY = [
    "trainer.max_steps=2",
    "vision_pretraining.steps=2",
    "vision_pretraining.n_images=16",
    "vision_pretraining.n_val=8",
    "dataset.prepare.n_train=16",
    "dataset.prepare.n_eval=6",
    "dataset.batch_size=4",
    "~callbacks.benchmark_validation",
]


def test_the_recipe_run_bakes_into_a_checkpoint_with_every_trained_weight(tmp_path, env):
    out = tmp_path / "run"
    run("train.py", ["experiment=tiny_base", *TOY, f"hydra.run.dir={out}"], tmp_path, env)
    stage0 = json.loads((out / "vision_pretraining.json").read_text())
    assert set(stage0) >= {"vision_pretraining/color_accuracy", "vision_pretraining/background_accuracy"}
    export = out / "checkpoints" / "export"
    trained = load_file(export / "language_model.safetensors")
    assert any(k.startswith("model.vision_tower.") for k in trained), "the ViT trained, so the export holds it"
    base = bake(out, tmp_path / "base")
    model = AutoModelForImageTextToText.from_pretrained(base)
    state = model.state_dict()
    start = AutoModelForImageTextToText.from_pretrained(
        json.loads((export / "export.json").read_text())["base_checkpoint"]
    )
    for name, tensor in {
        **trained,
        **{f"model.multi_modal_projector.{k}": v for k, v in load_file(export / "projector.safetensors").items()},
    }.items():
        assert torch.equal(state[name], tensor), name
    vit = [k for k in trained if k.startswith("model.vision_tower.")]
    assert any(not torch.equal(start.state_dict()[k], state[k]) for k in vit)
    info = json.loads((base / INFO).read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert info["metrics"] == {k: metrics[k] for k in info["metrics"]} and info["sha256"] == sha256(base / WEIGHTS)
    (stage,) = info["stages"]  # one run, no init_from
    assert info["spec"]["patch_size"] == 8 and stage["recipe"]["vision_pretraining"]["steps"] == 2
    assert stage["overrides"][0] == "experiment=tiny_base" and info["minutes"] == stage["minutes"] > 0
    assert tiny_base_checkpoint(base, patch_size=8, text_layers=4, vocab_size=1024) == str(base)
