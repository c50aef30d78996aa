"""Relevance maps: the recorded attention column equals brute-force eager attention, on the image grid."""

import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from transformers.vision_utils import get_vision_window_index

from sinkflow.analysis import relevance
from sinkflow.analysis.context import AnalysisContext
from sinkflow.caption import Caption
from sinkflow.models.families.base import FAMILIES
from sinkflow.models.families.llava import LlavaFamily
from sinkflow.models.families.qwen2_5_vl import Qwen25VLFamily
from sinkflow.models.families.qwen2_vl import Qwen2VLFamily
from sinkflow.models.tiny import TinyLlavaSpec, build_tiny_llava
from sinkflow.models.tiny_qwen import TinyQwenSpec, build_tiny_qwen
from sinkflow.sinks.strategies.none import NoneStrategy


def images(shapes_root, n=3, sizes=None):
    out = []
    for i in range(n):
        image = Image.open(shapes_root / "eval_images" / f"eval_{i:05d}.png").convert("RGB")
        out.append(image.resize(sizes[i]) if sizes else image)
    return out


@pytest.mark.parametrize("layer, block", [(None, 1), (0, 0), (-1, 2)])
def test_llava_column_equals_eager_output_attentions(shapes_root, layer, block):
    model, processor = build_tiny_llava(TinyLlavaSpec(seed=2))
    batch = dict(processor.image_processor(images(shapes_root), return_tensors="pt"))
    family = LlavaFamily()
    captured = relevance.capture(model, family, batch, layer)
    torch.testing.assert_close(captured.visual.features, family.encode(model, batch).features, atol=1e-5, rtol=0)
    model.set_attn_implementation("eager")
    attentions = family.vision_tower(model)(batch["pixel_values"], output_attentions=True).attentions[block]
    for i, target in enumerate([0, 5, 15]):
        # Sequence position 0 is CLS; feature f is position f + 1; the grid is the 4x4 raster of patches.
        expected = attentions[i, :, 1:, 1 + target].reshape(-1, 4, 4)
        torch.testing.assert_close(captured.column(i, target), expected, atol=1e-6, rtol=0)
        assert captured.cell(i, target) == divmod(target, 4)


@pytest.mark.parametrize("variant, block", [("qwen2_vl", 1), ("qwen2_vl", 2), ("qwen2_5_vl", 0), ("qwen2_5_vl", 2)])
def test_qwen_column_equals_brute_force_on_the_image_grid(shapes_root, variant, block, qwen_vit_attention):
    model, processor = build_tiny_qwen(TinyQwenSpec(variant=variant, seed=2, vision_layers=3))
    family = Qwen25VLFamily() if variant == "qwen2_5_vl" else Qwen2VLFamily()
    batch = dict(processor.image_processor(images(shapes_root, 2, [(64, 64), (48, 32)]), return_tensors="pt"))
    assert batch["image_grid_thw"].tolist() == [[1, 8, 8], [1, 4, 6]]
    captured = relevance.capture(model, family, batch, block)
    probs = qwen_vit_attention(model, batch, block)
    tower = model.model.visual
    if variant == "qwen2_5_vl":  # the blocks run on window-permuted merge windows of 4 patches
        window_index, _ = get_vision_window_index(batch["image_grid_thw"], 2, tower.window_size, tower.patch_size)
        sequence = (window_index[:, None] * 4 + torch.arange(4)).flatten().argsort()
    else:
        sequence = torch.arange(probs.shape[1])
    start = 0
    for image, (_, height, width) in enumerate(batch["image_grid_thw"].tolist()):
        for target in (0, 7, height * width - 1):
            expected = torch.zeros(probs.shape[0], height, width)
            for p in range(height * width):  # processor order: (h / 2, w / 2, 2, 2)
                bh, bw, mh, mw = np.unravel_index(p, (height // 2, width // 2, 2, 2))
                expected[:, bh * 2 + mh, bw * 2 + mw] = probs[:, sequence[start + p], sequence[start + target]]
            torch.testing.assert_close(captured.column(image, target), expected, atol=1e-6, rtol=0)
            bh, bw, mh, mw = np.unravel_index(target, (height // 2, width // 2, 2, 2))
            assert captured.cell(image, target) == (bh * 2 + mh, bw * 2 + mw)
        start += height * width
    if variant == "qwen2_5_vl" and block == 0:  # a windowed block: nothing outside the target's 4x4-patch window
        assert (captured.column(0, 0)[:, 4:, :] == 0).all() and (captured.column(0, 0)[:, :, 4:] == 0).all()


@pytest.mark.parametrize("family_name", FAMILIES.names())
def test_images_are_redrawn_as_the_vit_saw_them(shapes_root, family_name):
    """Every family's images come back as the ViT saw them (CLIP's pixels un-normalised; Qwen's flattened
    merge-window patches put back on the grid), or the family says that it does not redraw them."""
    family_cls = FAMILIES[family_name]
    (_, processor), family = family_cls.build_tiny(seed=2), family_cls()
    image = images(shapes_root, 1)[0]  # 64 px: neither processor resizes it
    batch = dict(processor.image_processor([image], return_tensors="pt"))
    try:
        drawn = family.seen_images(batch, processor)[0]
    except NotImplementedError as err:
        assert str(err).startswith(f"{family_cls.__name__} does not ")
        pytest.skip(str(err))
    assert drawn.shape == (64, 64, 3)
    np.testing.assert_allclose(drawn.numpy(), np.asarray(image, dtype=np.float64) / 255, atol=0.02)


def test_targets_sink_nonsink_index_and_errors():
    features = torch.zeros(2, 5, 2)
    features[:, :, 0] = torch.tensor([[1.0, 5.0, 3.0, 2.0, 4.0], [1.0, 2.0, 3.0, 0.5, 0.0]])
    sinks = torch.tensor([[False, False, True, False, False], [False] * 5])
    assert relevance.choose_targets(features, [5, 4], sinks, "sink") == ([2, 2], [False, True])
    # Non-sinks by norm: image 0: 1 (#0), 2 (#3), 4 (#4), 5 (#1); image 1: 0.5 (#3), 1 (#0), 2, 3 -> lower medians.
    assert relevance.choose_targets(features, [5, 4], sinks, "nonsink")[0] == [3, 0]
    assert relevance.choose_targets(features, [5, 4], sinks, 1)[0] == [1, 1]
    with pytest.raises(ValueError, match="outside image 1's 4 tokens"):
        relevance.choose_targets(features, [5, 4], sinks, 4)
    with pytest.raises(ValueError, match=r"relevance.tokens entries must be sink\|nonsink\|<int>, got 'cls'"):
        relevance.parse_token("cls")


def test_spread_of_a_point_and_a_flat_map():
    point = torch.zeros(4, 4)
    point[1, 2] = 1.0
    assert relevance.spread(point, (1, 2)) == (0.0, 0.0)
    entropy, distance = relevance.spread(torch.ones(4, 4), (0, 0))
    assert entropy == pytest.approx(1.0) and distance > 2


def test_run_writes_summary_and_figure(tmp_path, image_question_batches, simulated_llava):
    module = simulated_llava(NoneStrategy()).eval()
    processor = module.processor
    loader = image_question_batches(processor, 6, "What is the background color?")
    settings = OmegaConf.create({"tokens": ["sink", "nonsink"], "heads": "all", "max_images": 2, "layer": None})
    caption = Caption("tiny", "none", None, "shapes", True)
    ctx = AnalysisContext(module, lambda: iter(loader), settings, tmp_path, task="relevance", caption=caption)
    summary = relevance.run(ctx)
    assert summary["images"] == 2 and summary["sink_fallbacks"] == 2  # planted sinks are invisible to the ViT
    assert summary["layer"] == 1 and set(summary["tokens"]) == {"sink", "nonsink"}
    for token in ("sink", "nonsink"):
        assert set(summary["tokens"][token]["per_head"]) == {f"head_{h}" for h in range(4)}
        assert 0 < summary["tokens"][token]["entropy"] <= 1
        assert (tmp_path / f"relevance_{token}.png").stat().st_size > 0
    assert json.loads((tmp_path / "relevance.json").read_text())["images"] == 2
    with pytest.raises(ValueError, match=r"^`relevance.heads` must be one of \('mean', 'all'\), got 'max'$"):
        relevance.run(
            AnalysisContext(module, lambda: iter(loader), OmegaConf.merge(settings, {"heads": "max"}), tmp_path)
        )
