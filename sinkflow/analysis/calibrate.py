"""`analyze.py task=calibrate`: the ViT's token norms over a dataset's images, to choose the sink threshold tau.

Writes `calibration.json` (`sinkflow.sinks.calibrate.summarise`: norm quantiles, the suggested tau, sinks per
image at that tau and at the configured detector), `norm_histogram.png` (every token norm, log-log) and
`sorted_norms.png` (each image's norms in descending order, and their median), both with the thresholds marked.
An image cut into ViT tiles counts as one image per tile, as the detector judges tiles alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from sinkflow.analysis.context import AnalysisContext, Split
from sinkflow.analysis.task import ANALYSES, Analysis
from sinkflow.checks import choice
from sinkflow.plotting import pyplot
from sinkflow.sinks.calibrate import summarise
from sinkflow.sinks.detectors.base import token_norms
from sinkflow.sinks.detectors.norm_threshold import NormThreshold

plt = pyplot()


def run(ctx: AnalysisContext) -> dict:
    """Token norms of the model's ViT over the distinct images of `calibrate.split` -> summary and figures."""
    settings, module = ctx.settings, ctx.module
    split = choice("calibrate.split", settings.split, Split)
    rows, lengths, planted, n_images = [], [], [], 0
    for batch in ctx.images(split, settings.max_images):
        visual = module.visual(batch)
        n_images += len(visual.lengths)
        # Per ViT tile, as the detector judges them (one row per image for untiled families).
        norms, tile_lengths = visual.by_tile(token_norms(visual.features))
        tile_planted = visual.by_tile(visual.planted)[0] if visual.planted is not None else None
        for i, n in enumerate(tile_lengths):
            rows.append(norms[i, :n].cpu())
            lengths.append(n)
            if tile_planted is not None:
                planted.append(tile_planted[i, :n].cpu())
    if not rows:
        raise ValueError(f"dataset has no images in its {split!r} split to calibrate on")
    norms_all = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)
    detector = module.detector
    summary = summarise(
        norms_all,
        lengths=lengths,
        configured=detector,
        min_ratio=settings.min_ratio,
        planted=torch.nn.utils.rnn.pad_sequence(planted, batch_first=True) if planted else None,
    )
    summary = {"model": module.source, "split": split, **summary}
    lines = {
        "suggested tau": summary["suggested_tau"],
        "configured tau": detector.tau if isinstance(detector, NormThreshold) else None,
    }
    tiles = f" ({len(rows)} ViT tiles)" if len(rows) != n_images else ""
    title = f"{Path(module.source).name}: {n_images} images{tiles}"
    figures = {
        "norm_histogram": plot_norm_histogram(torch.cat(rows), lines, title),
        "sorted_norms": plot_sorted_norms(rows, lines, title),
    }
    ctx.write(summary, figures, summary_name="calibration")
    Console().print_json(json.dumps(summary))
    return summary


def plot_norm_histogram(norms: torch.Tensor, lines: dict[str, float | None], title: str) -> plt.Figure:
    """Histogram of all token norms on log-log axes, with the threshold(s) marked."""
    values = norms.flatten().float().clamp_min(1e-6).numpy()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(values, bins=np.logspace(np.log10(values.min()), np.log10(values.max()) + 1e-3, 120), color="tab:blue")
    return _finish(fig, ax, ("token L2 norm (projector input)", "tokens"), title, lines, vertical=True)


def plot_sorted_norms(norms: list[torch.Tensor], lines: dict[str, float | None], title: str) -> plt.Figure:
    """Each image's norms sorted in descending order (faint), their median (bold), the threshold(s)."""
    ranked = [row.float().sort(descending=True).values.numpy() for row in norms]
    fig, ax = plt.subplots(figsize=(7, 4))
    for row in ranked[:200]:
        ax.plot(np.arange(1, len(row) + 1), row, color="tab:blue", alpha=0.08, linewidth=0.8)
    shortest = min(len(row) for row in ranked)  # the median over images runs over the ranks every image has
    ax.plot(
        np.arange(1, shortest + 1),
        np.median([row[:shortest] for row in ranked], axis=0),
        color="black",
        linewidth=2,
        label="median over images",
    )
    return _finish(fig, ax, ("rank within the image", "token L2 norm"), title, lines, vertical=False)


def _finish(
    fig: plt.Figure, ax: plt.Axes, labels: tuple[str, str], title: str, lines: dict[str, float | None], vertical: bool
) -> plt.Figure:
    """Log-log axes, labels, the threshold lines (vertical on the norm axis), legend, tight layout."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_title(title)
    for (label, value), color in zip(lines.items(), ("tab:red", "tab:green")):
        if value is not None:
            (ax.axvline if vertical else ax.axhline)(value, color=color, linestyle="--", label=f"{label} = {value:.3g}")
    ax.legend()
    fig.tight_layout()
    return fig


ANALYSES.register("calibrate", Analysis(run))
