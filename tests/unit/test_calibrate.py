"""Threshold calibration: the valley of a bimodal log-norm histogram, the unimodal fallback, the summary."""

import pytest
import torch

from sinkflow.sinks.calibrate import summarise, valley_tau
from sinkflow.sinks.detectors.norm_threshold import NormThreshold


def bimodal(n_images=200, n_tokens=64, sinks_per_image=3, seed=0):
    """Bulk norms around 20, a few sinks per image around 400 (log-normal), like CLIP ViT-L features."""
    generator = torch.Generator().manual_seed(seed)
    norms = torch.exp(torch.randn(n_images, n_tokens, generator=generator) * 0.2 + torch.log(torch.tensor(20.0)))
    sinks = torch.exp(torch.randn(n_images, sinks_per_image, generator=generator) * 0.1
                      + torch.log(torch.tensor(400.0)))
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
