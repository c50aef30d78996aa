"""Threshold calibration: the valley of a bimodal log-norm histogram, the unimodal fallback, the summary, and the
`calibrate` task over the distinct images of a split."""

import json
import re
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from sinkflow.analysis import calibrate
from sinkflow.analysis.context import analysis_context
from sinkflow.data.datamodule import LVLMDataModule
from sinkflow.data.templates import ProcessorChatTemplate
from sinkflow.models.families.base import FAMILIES
from sinkflow.models.families.qwen2_vl import Qwen2VLFamily
from sinkflow.models.tiny_qwen import TinyQwenSpec, build_tiny_qwen
from sinkflow.module import SinkflowModule
from sinkflow.sinks.calibrate import summarise, valley_tau
from sinkflow.sinks.detectors.base import token_norms
from sinkflow.sinks.detectors.norm_threshold import NormThreshold
from sinkflow.sinks.simulated import SimulatedSinks
from sinkflow.sinks.strategies.none import NoneStrategy


def bimodal(n_images=200, n_tokens=64, sinks_per_image=3, seed=0):
    """Bulk norms around 20, a few sinks per image around 400 (log-normal), like CLIP ViT-L features."""
    generator = torch.Generator().manual_seed(seed)
    norms = torch.exp(torch.randn(n_images, n_tokens, generator=generator) * 0.2 + torch.log(torch.tensor(20.0)))
    sinks = torch.exp(
        torch.randn(n_images, sinks_per_image, generator=generator) * 0.1 + torch.log(torch.tensor(400.0))
    )
    norms[:, :sinks_per_image] = sinks
    return norms


def test_valley_lies_between_the_two_modes_and_separates_them():
    norms = bimodal()
    tau = valley_tau(norms)
    bulk_max, sink_min = norms[:, 3:].max().item(), norms[:, :3].min().item()
    assert bulk_max < tau < sink_min


def test_unimodal_norms_have_no_valley():
    generator = torch.Generator().manual_seed(1)
    assert valley_tau(torch.exp(torch.randn(100, 64, generator=generator) * 0.3 + 3.0)) is None
    assert valley_tau(torch.full((4, 16), 7.0)) is None


def test_summary_counts_sinks_and_scores_planted_ones():
    norms = bimodal(n_images=50)
    planted = torch.zeros_like(norms, dtype=torch.bool)
    planted[:, :3] = True
    summary = summarise(norms, configured=NormThreshold(tau=100.0), planted=planted)
    assert summary["images"] == 50 and summary["tokens_per_image"] == 64
    assert summary["rule"].startswith("valley")
    assert summary["sinks_per_image_at_suggestion"] == {"mean": 3.0, "histogram": {3: 50}}
    assert summary["configured_detector"]["histogram"] == {3: 50}
    assert summary["adaptive_drop"]["mean"] == 3.0
    assert summary["simulated_sinks"]["precision_at_suggestion"] == 1.0
    assert summary["simulated_sinks"]["recall_at_suggestion"] == 1.0
    assert summary["norm_quantiles"]["q50"] == pytest.approx(norms.flatten().sort().values[1600].item())


def test_summary_falls_back_to_the_adaptive_rule_without_a_second_mode():
    generator = torch.Generator().manual_seed(2)
    norms = torch.exp(torch.randn(40, 32, generator=generator) * 0.2 + 3.0)
    summary = summarise(norms, min_ratio=2.0)
    assert summary["suggested_tau"] is None and summary["rule"].startswith("adaptive_drop")
    assert summary["sinks_per_image_at_suggestion"] == {"mean": 0.0, "histogram": {0: 40}}
    assert summary["adaptive_drop"]["histogram"] == {0: 40}


def test_a_shoulder_on_the_bulk_does_not_hide_a_small_sink_mode():
    generator = torch.Generator().manual_seed(3)
    norms = torch.exp(torch.randn(64, 64, generator=generator) * 0.3 + 3.0)  # bulk with a noisy right tail
    norms[0, 0] = 2000.0  # a single far sink
    tau = valley_tau(norms)
    assert tau is not None and norms.flatten().sort().values[-2] < tau < 2000.0


def calibrate_over(module: SinkflowModule, questions: list[tuple[str, str]], tmp_path) -> dict:
    """The `calibrate` task over an evaluation set of (id, image path) questions, through the analysis context."""
    items = [{"id": question_id, "image_path": path, "prompt": "What is it?"} for question_id, path in questions]
    datamodule = LVLMDataModule(None, None, eval_sets={"toy": lambda: items}).bind(
        module.processor, ProcessorChatTemplate()
    )
    cfg = OmegaConf.create(
        {
            "task": "calibrate",
            "max_samples": 64,
            "batch_size": 8,
            "one_question_per_image": True,
            "paths": {"output_dir": str(tmp_path)},
            "calibrate": {"split": "eval", "max_images": None, "batch_size": 2, "min_ratio": 2.0},
        }
    )
    with torch.no_grad():
        return calibrate.run(analysis_context(cfg, module, datamodule, loggers=[]))


def test_the_task_reads_each_image_once_and_names_an_image_the_processor_rejects(shapes_root, tmp_path):
    model, processor = build_tiny_qwen(TinyQwenSpec())
    module = SinkflowModule(
        model,
        processor,
        Qwen2VLFamily(),
        NoneStrategy(),
        NormThreshold(tau=100.0),
        source="tiny/qwen2_vl",
        simulated_sinks=SimulatedSinks(k=2, norm=150.0),
    ).eval()
    images = [str(shapes_root / "eval_images" / f"eval_{i:05d}.png") for i in range(3)]
    # Three images, the first asked about twice: each image's norms count once, in batches of 2.
    summary = calibrate_over(module, [("a", images[0]), ("b", images[0]), ("c", images[1]), ("d", images[2])], tmp_path)
    with torch.no_grad():
        visual = module.visual(
            processor.image_processor([Image.open(p).convert("RGB") for p in images], return_tensors="pt")
        )
    direct = summarise(
        token_norms(visual.features), lengths=visual.lengths, configured=module.detector, planted=visual.planted
    )
    rows = [norms[:n] for norms, n in zip(token_norms(visual.features), visual.lengths)]
    caption = (
        "tiny/qwen2_vl (SIMULATED sinks) · strategy none · sinks: norm_threshold tau=100\ndata toy · 3 eval images"
    )
    assert summary == {
        "caption": caption,
        "model": module.source,
        "split": "eval",
        **direct,
        **calibrate.figure_data(rows),  # what the figures draw
    }
    assert summary["images"] == 3
    assert json.loads((tmp_path / "calibration.json").read_text()) == json.loads(json.dumps(summary))
    for name in ("norm_histogram.png", "sorted_norms.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Qwen2-VL's processor refuses an aspect ratio above 200: the error names the file and the question.
    thin = tmp_path / "thin.png"
    Image.new("RGB", (1, 300)).save(thin)
    message = f"cannot process image {thin} (question 'e'): absolute aspect ratio must be smaller than 200, got 300.0"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        calibrate_over(module, [("a", images[0]), ("e", str(thin))], tmp_path)
    with pytest.raises(ValueError, match=r"^`calibrate.split` must be one of \('eval', 'train'\), got 'val'$"):
        calibrate.run(SimpleNamespace(settings=OmegaConf.create({"split": "val"}), module=module))


def test_a_tiled_family_is_calibrated_per_vit_tile(shapes_root, tmp_path):
    """LLaVA-NeXT's base view and grid tiles each ran through the ViT alone: one row of norms per tile."""
    family_cls = FAMILIES["llava_next"]
    model, processor = family_cls.build_tiny(seed=1)
    module = SinkflowModule(
        model, processor, family_cls(), NoneStrategy(), NormThreshold(tau=100.0), source="tiny/llava_next"
    ).eval()
    images = [str(shapes_root / "eval_images" / f"eval_{i:05d}.png") for i in range(2)]
    summary = calibrate_over(module, [("a", images[0]), ("b", images[1])], tmp_path)
    with torch.no_grad():
        visual = module.visual(
            dict(processor.image_processor([Image.open(p).convert("RGB") for p in images], return_tensors="pt"))
        )
    norms, lengths = visual.by_tile(token_norms(visual.features))
    assert len(lengths) > 2 and summary["images"] == len(lengths)
    assert summary == {
        "caption": f"tiny/llava_next · strategy none · sinks: norm_threshold tau=100\ndata toy · 2 eval images "
        f"({len(lengths)} ViT tiles)",
        "model": module.source,
        "split": "eval",
        **summarise(norms, lengths=lengths, configured=module.detector),
        **calibrate.figure_data([row[:n] for row, n in zip(norms, lengths)]),
    }
