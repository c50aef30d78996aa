"""`analyze.py task=calibrate`: the ViT's token norms over a dataset's images, to choose the sink threshold tau.

Writes `calibration.json` (`sinkflow.sinks.calibrate.summarise`: norm quantiles, the suggested tau, sinks per
image at that tau and at the configured detector; and what the figures draw), `norm_histogram.png` (every token
norm, log-log) and `sorted_norms.png` (each image's norms in descending order: their median and 10-90 % band over
the images), both with the thresholds marked and saying when the sinks are simulated.
An image cut into ViT tiles counts as one image per tile, as the detector judges tiles alone.
"""

from __future__ import annotations

import json

import numpy as np
import torch
from rich.console import Console

from sinkflow.analysis.context import AnalysisContext, Split
from sinkflow.analysis.task import ANALYSES, Analysis
from sinkflow.checks import choice
from sinkflow.plotting import pyplot, titled
from sinkflow.sinks.calibrate import log_histogram, summarise
from sinkflow.sinks.detectors.base import token_norms

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
    tiles = f" ({len(rows)} ViT tiles)" if len(rows) != n_images else ""
    summary = {
        "caption": ctx.figure_caption(f"{n_images} {split} images{tiles}"),
        "model": module.source,
        "split": split,
        **summary,
        **figure_data(rows),
    }
    figures = {"norm_histogram": plot_norm_histogram(summary), "sorted_norms": plot_sorted_norms(summary)}
    ctx.write(summary, figures, summary_name="calibration")
    Console().print_json(json.dumps({k: v for k, v in summary.items() if k not in ("norm_histogram", "sorted_norms")}))
    return summary


def figure_data(rows: list[torch.Tensor]) -> dict:
    """What the figures draw, kept in the summary: the histogram of every token norm (log-spaced bins, as the
    suggestion reads it) and, per rank within an image, the median and the 10 % / 90 % quantiles of the norms over
    the images (over the ranks every image has)."""
    counts, log_edges = log_histogram(torch.cat(rows))
    shortest = min(len(row) for row in rows)
    ranked = torch.stack([row.float().sort(descending=True).values[:shortest] for row in rows]).double()
    return {
        "norm_histogram": {"edges": (10 ** log_edges.double()).tolist(), "counts": counts.tolist()},
        "sorted_norms": {
            name: ranked.quantile(q, dim=0).tolist() for name, q in (("q10", 0.1), ("median", 0.5), ("q90", 0.9))
        },
    }


def thresholds(summary: dict) -> dict[str, float]:
    """The thresholds both figures mark: the suggested tau, and the configured detector's when it has one."""
    lines = {
        "suggested tau": summary["suggested_tau"],
        "configured tau": summary.get("configured_detector", {}).get("tau"),
    }
    return {label: value for label, value in lines.items() if value is not None}


def plot_norm_histogram(summary: dict) -> plt.Figure:
    """Histogram of every token norm on log-log axes, the thresholds marked; drawn from the summary alone."""
    histogram = summary["norm_histogram"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.stairs(histogram["counts"], histogram["edges"], fill=True, color="tab:blue", label="tokens per norm bin")
    return _finish(fig, ax, summary, ("token L2 norm (projector input)", "tokens per bin"), "ViT token norms", True)


def plot_sorted_norms(summary: dict) -> plt.Figure:
    """Each image's norms sorted in descending order: the median over images and their 10-90 % band, per rank, the
    thresholds marked; drawn from the summary alone."""
    sorted_norms = summary["sorted_norms"]
    ranks = np.arange(1, len(sorted_norms["median"]) + 1)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.fill_between(
        ranks, sorted_norms["q10"], sorted_norms["q90"], color="tab:blue", alpha=0.25, label="10-90 % of images"
    )
    ax.plot(ranks, sorted_norms["median"], color="black", linewidth=2, label="median over images")
    labels = ("rank within the image (1 = its largest norm)", "token L2 norm (projector input)")
    return _finish(fig, ax, summary, labels, "each image's ViT token norms, largest first", False)


def _finish(
    fig: plt.Figure, ax: plt.Axes, summary: dict, labels: tuple[str, str], what: str, vertical: bool
) -> plt.Figure:
    """Log-log axes, labels, the threshold lines (vertical on the norm axis), legend, and a title that says when the
    sinks are simulated."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    for (label, value), color in zip(thresholds(summary).items(), ("tab:red", "tab:green")):
        (ax.axvline if vertical else ax.axhline)(value, color=color, linestyle="--", label=f"{label} = {value:.3g}")
    ax.legend(fontsize=8)
    if "simulated_sinks" in summary:
        what += ": the sinks are SIMULATED (planted by model.simulated_sinks), not the ViT's own"
    return titled(fig, what, summary["caption"])


ANALYSES.register("calibrate", Analysis(run))
