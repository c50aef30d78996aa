"""Stage 0 of the tiny base's recipe: patch labels that match the pixels, and a ViT that learns them."""

import pytest
import torch

from sinkflow.models.families.llava import LlavaFamily
from sinkflow.models.region_pretraining import patch_targets, pretrain_vision
from sinkflow.models.tiny import TinyLlavaSpec, build_tiny_llava
from sinkflow.module import SinkflowModule
from sinkflow.shapes.render import render_scene
from sinkflow.shapes.scene import BACKGROUNDS, SHAPE_COLORS, SHAPES, Obj, Scene
from sinkflow.sinks.strategies.none import NoneStrategy


def test_patch_targets_label_each_patch_by_the_shape_box_under_its_centre_and_its_grid_cell():
    # A 48-px image in 8-px patches (6x6), grid cells of 16 px; one red circle in the box (16, 0)-(32, 14).
    scene = Scene("gray", (Obj("circle", "red", 0, 1, (16, 0, 32, 14)),))
    targets = patch_targets(scene, image_size=48, patch_size=8)
    colors = targets["colors"].view(6, 6)
    expected = torch.zeros(6, 6, dtype=torch.long)
    expected[0:2, 2:4] = 1 + list(SHAPE_COLORS).index("red")  # centres (20|28, 4|12) lie in the box
    assert torch.equal(colors, expected)
    assert torch.equal(targets["shapes"].view(6, 6) > 0, expected > 0)
    assert set(targets["shapes"].tolist()) == {0, 1 + SHAPES.index("circle")}
    assert torch.equal(targets["rows"].view(6, 6)[:, 0], torch.tensor([0, 0, 1, 1, 2, 2]))
    assert torch.equal(targets["columns"].view(6, 6)[0], torch.tensor([0, 0, 1, 1, 2, 2]))
    assert int(targets["backgrounds"]) == list(BACKGROUNDS).index("gray")
    # The label agrees with the rendered pixels at a labelled patch's centre.
    assert render_scene(scene, 48).convert("RGB").getpixel((20, 4)) == SHAPE_COLORS["red"]


@pytest.fixture
def module():
    model, processor = build_tiny_llava(TinyLlavaSpec(patch_size=8))
    return SinkflowModule(model.train(), processor, LlavaFamily(), NoneStrategy())


def test_stage_0_teaches_the_vit_the_background_and_the_shape_colours_within_a_few_steps(module):
    """Each batch's images and labels are drawn together (labels of other images leave everything at chance);
    seeded, so the figures are the same whatever ran before."""
    module.hf.requires_grad_(True)
    accuracy = pretrain_vision(module, steps=60, batch_size=64, lr=2e-3, n_images=512, n_val=128, warmup_steps=10)
    assert accuracy["vision_pretraining/background_accuracy"] > 0.9  # chance: 0.25
    assert accuracy["vision_pretraining/color_accuracy"] > 0.4  # chance: 1/7 (and 0 for "always empty")
    assert accuracy["vision_pretraining/row_accuracy"] > 0.8  # chance: 1/3


def test_stage_0_refuses_a_frozen_vit(module):
    module.family.vision_tower(module.hf).requires_grad_(False)
    with pytest.raises(ValueError, match="set model.freeze_vision=false"):
        pretrain_vision(module, steps=1)
