"""Calibration of the sink threshold for a ViT: token norms over a dataset -> suggested tau and a summary.

What a user runs first on a new vision tower (SigLIP, Qwen-ViT, another CLIP layer): sink norms are bimodal in
trained ViTs (a bulk of ordinary patches and a few tokens one or two orders of magnitude above), so tau is put in
the valley between the two modes of the log-norm histogram. When the histogram has no second mode the per-image
`adaptive_drop` rule is reported instead. Pure tensor code; the `analyze.py` task that runs it and draws its
figures is `sinkflow.analysis.calibrate`.
"""

from __future__ import annotations

from collections import Counter

import torch

from sinkflow.checks import number
from sinkflow.sinks.detectors.adaptive_drop import AdaptiveDrop
from sinkflow.sinks.detectors.base import SinkDetector

BINS = 120
SMOOTHING = 5  # bins in the moving average applied before looking for modes
QUANTILES = (0.5, 0.9, 0.99, 0.999)


def log_histogram(norms: torch.Tensor, bins: int = BINS) -> tuple[torch.Tensor, torch.Tensor]:
    """(counts [bins], edges [bins + 1]) of log10 norms."""
    logs = norms.flatten().float().clamp_min(1e-6).log10()
    low, high = logs.min().item(), logs.max().item()
    if high - low < 1e-6:
        low, high = low - 0.5, high + 0.5
    counts = torch.histc(logs, bins=bins, min=low, max=high)
    return counts, torch.linspace(low, high, bins + 1)


def valley_tau(norms: torch.Tensor, bins: int = BINS) -> float | None:
    """The norm at the valley between the bulk mode and the highest mode above it, or None if unimodal.

    Modes are local maxima of the smoothed histogram; the valley is its lowest stretch between the two (the middle
    of that stretch when it is flat, e.g. an empty gap) and must be below half the upper mode to count.
    """
    counts, edges = log_histogram(norms, bins)
    kernel = torch.ones(1, 1, SMOOTHING) / SMOOTHING
    smooth = torch.nn.functional.conv1d(counts.view(1, 1, -1), kernel, padding=SMOOTHING // 2).view(-1)
    bulk = int(smooth.argmax())
    padded = torch.cat([smooth.new_zeros(1), smooth, smooth.new_zeros(1)])
    peaks = [
        i
        for i in range(bulk + 1, bins)
        if padded[i + 1] > 0 and padded[i + 1] >= padded[i] and padded[i + 1] > padded[i + 2]
    ]
    if not peaks:
        return None
    # A mode counts when the histogram dips below half its height between it and the bulk; a bump on the bulk's
    # shoulder does not. The highest such mode is the sinks'.
    accepted = [(smooth[i].item(), i) for i in peaks if smooth[bulk : i + 1].min() <= 0.5 * smooth[i]]
    if not accepted:
        return None
    upper = max(accepted)[1]
    between = smooth[bulk : upper + 1]
    flat = (between == between.min()).nonzero().squeeze(1)
    middle = bulk + int(flat[len(flat) // 2])
    return 10 ** ((edges[middle] + edges[middle + 1]).item() / 2)


def count_summary(counts: torch.Tensor) -> dict:
    """Mean sinks per image and the histogram {count: images}."""
    return {
        "mean": counts.float().mean().item(),
        "histogram": {int(k): v for k, v in sorted(Counter(counts.tolist()).items())},
    }


def summarise(
    norms: torch.Tensor,
    *,
    lengths: list[int] | None = None,
    configured: SinkDetector | None = None,
    min_ratio: float = 2.0,
    planted: torch.Tensor | None = None,
) -> dict:
    """Calibration summary of norms [n_images, N] (float32, rows padded after `lengths`): quantiles, suggested tau,
    sinks per image."""
    number("calibrate.min_ratio", min_ratio, above=1)  # before the detector's check, which names its own key
    lengths = lengths or [norms.shape[1]] * norms.shape[0]
    valid = torch.arange(norms.shape[1]) < torch.tensor(lengths)[:, None]
    flat = norms[valid].sort().values
    summary: dict = {
        "images": norms.shape[0],
        "tokens_per_image": lengths[0] if min(lengths) == max(lengths) else {"min": min(lengths), "max": max(lengths)},
        "norm_quantiles": {f"q{q * 100:g}": flat[min(int(q * len(flat)), len(flat) - 1)].item() for q in QUANTILES},
        "norm_max": flat[-1].item(),
    }
    adaptive = AdaptiveDrop(min_ratio=min_ratio).mask(norms, lengths)
    summary["adaptive_drop"] = {"min_ratio": min_ratio, **count_summary(adaptive.sum(dim=1))}
    tau = valley_tau(flat)
    summary["suggested_tau"] = tau
    if tau is None:
        summary["rule"] = "adaptive_drop: the norm histogram has no second mode"
        suggested = adaptive
    else:
        summary["rule"] = "valley of the bimodal log-norm histogram"
        suggested = (norms >= tau) & valid
    summary["sinks_per_image_at_suggestion"] = count_summary(suggested.sum(dim=1))
    if configured is not None:
        found = configured.mask(norms, lengths)
        summary["configured_detector"] = {
            "mode": configured.name,
            **configured.options(),
            **count_summary(found.sum(dim=1)),
        }
    if planted is not None:
        tp = (suggested & planted).sum().item()
        summary["simulated_sinks"] = {
            "note": "SIMULATION: planted sinks of the tiny model (model.simulated_sinks)",
            "precision_at_suggestion": tp / max(suggested.sum().item(), 1),
            "recall_at_suggestion": tp / max(planted.sum().item(), 1),
        }
    return summary
