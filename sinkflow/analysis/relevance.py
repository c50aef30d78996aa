"""Relevance maps (docs/paper.md#what-sinks-encode): the ViT self-attention every patch pays TO one chosen token,
on the patch grid.

Non-sinks gather from their neighbourhood; sinks gather from broad foreground or background regions. Only the
chosen layer's queries and keys are kept (`models.vit_attention.capture`: after rotary embeddings, as the model
uses them; the output is computed as usual); the column softmax(q k^T * scale)[:, t] is formed afterwards for the
chosen token t only. No other layer's attention is touched or stored.

The family says which attention modules the ViT has, which block feeds the projector, where each feature and
patch sits in the sequences its blocks attend within (`VisualFamily.attention_positions`: LLaVA's CLS is left off
the grid; Qwen's merge-window order, and Qwen2.5-VL's window permutation, are undone, so windowed layers show
attention inside the target's window only) and how to redraw its images.

Targets are chosen on the raw ViT features (what the chosen layers actually see): `sink` is the highest-norm
token the detector marks, falling back to the highest-norm token when an image has none (always the case for the
tiny model, whose SIMULATED sinks are planted after the ViT and are invisible to its attention); `nonsink` is the
non-sink of median norm (a typical token); an int is a feature index.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import torch
from matplotlib.patches import Rectangle

from sinkflow.analysis.context import AnalysisContext, image_names
from sinkflow.analysis.task import ANALYSES, Analysis
from sinkflow.checks import choice
from sinkflow.models.vit_attention import capture
from sinkflow.plotting import pyplot, titled
from sinkflow.sinks.detectors.base import token_norms

plt = pyplot()
log = logging.getLogger(__name__)
Heads = Literal["mean", "all"]  # one map averaged over the heads, or one map per head


def parse_token(token) -> str | int:
    """An entry of `relevance.tokens`: 'sink', 'nonsink' or a feature index."""
    if token in ("sink", "nonsink") or (isinstance(token, int) and not isinstance(token, bool)):
        return token
    raise ValueError(f"relevance.tokens entries must be sink|nonsink|<int>, got {token!r}")


def choose_targets(
    features: torch.Tensor, lengths: list[int], sinks: torch.Tensor | None, token: str | int
) -> tuple[list[int], list[bool]]:
    """Per image the feature index to map, and whether `sink` fell back to the highest norm (no sink found)."""
    norms = token_norms(features)
    targets, fallbacks = [], []
    for i, n in enumerate(lengths):
        row = norms[i, :n]
        marked = sinks[i, :n] if sinks is not None else torch.zeros(n, dtype=torch.bool, device=row.device)
        fallback = False
        if isinstance(token, int):
            if not 0 <= token < n:
                raise ValueError(f"relevance.tokens: {token} is outside image {i}'s {n} tokens")
            index = token
        elif token == "sink":
            fallback = not marked.any()
            index = int(row.masked_fill(~marked, -torch.inf).argmax()) if not fallback else int(row.argmax())
        else:
            candidates = (~marked).nonzero().squeeze(1) if not marked.all() else torch.arange(n, device=row.device)
            ranked = candidates[row[candidates].argsort(stable=True)]
            index = int(ranked[(len(ranked) - 1) // 2])  # the (lower) median norm: a typical token
        targets.append(index)
        fallbacks.append(fallback)
    return targets, fallbacks


def spread(relevance: torch.Tensor, cell: tuple[int, int] | None) -> tuple[float, float]:
    """(normalised entropy in [0, 1], attention-weighted mean distance in patches to `cell`) of a [rows, cols] map.

    Broad (sink-like) maps have high entropy and distance; local (non-sink) maps low ones.
    """
    weights = relevance.flatten().double()
    weights = weights / weights.sum().clamp_min(1e-12)
    entropy = float(-(weights * weights.clamp_min(1e-12).log()).sum() / np.log(max(len(weights), 2)))
    if cell is None:
        return entropy, float("nan")
    rows, cols = torch.meshgrid(torch.arange(relevance.shape[0]), torch.arange(relevance.shape[1]), indexing="ij")
    distance = ((rows - cell[0]) ** 2 + (cols - cell[1]) ** 2).double().sqrt().flatten().to(weights.device)
    return entropy, float((weights * distance).sum())


def plot_relevance(panels: list[dict], images: list[np.ndarray], what: str, caption: str) -> plt.Figure:
    """One row per image: the image, then the panel's relevance map(s) (as the summary holds them) laid over it, on one
    colour scale from zero for every map, with its colour bar; the target patch outlined."""
    n_maps = len(panels[0]["maps"])
    top = max(float(np.max(relevance)) for panel in panels for relevance in panel["maps"])
    fig, axes = plt.subplots(
        len(panels), n_maps + 1, figsize=(2.2 * (n_maps + 1) + 1, 2.2 * len(panels) + 0.9), squeeze=False
    )
    for ax_row, panel, image in zip(axes, panels, images):
        height, width = image.shape[:2]
        ax_row[0].imshow(image)
        ax_row[0].set_title(
            f"{panel['image']}\n{panel['kind']} #{panel['feature']}, norm {panel['norm']:.1f}", fontsize=7
        )
        for h, (ax, relevance) in enumerate(zip(ax_row[1:], panel["maps"])):
            ax.imshow(image)
            overlay = ax.imshow(
                np.array(relevance),
                cmap="inferno",
                alpha=0.6,
                vmin=0,
                vmax=top,
                extent=(0, width, height, 0),
                interpolation="nearest",
            )
            if panel["cell"] is not None:
                row, col = panel["cell"]
                step_y, step_x = height / len(relevance), width / len(relevance[0])
                ax.add_patch(
                    Rectangle((col * step_x, row * step_y), step_x, step_y, fill=False, edgecolor="cyan", linewidth=1.5)
                )
            ax.set_title(f"head {h}" if n_maps > 1 else "mean over heads", fontsize=7)
        for ax in ax_row:
            ax.set_axis_off()
    fig.colorbar(overlay, ax=axes.ravel().tolist(), label="attention probability paid to the outlined token")
    return titled(fig, what, caption)


def run(ctx: AnalysisContext) -> dict:
    """ViT attention paid to sink and non-sink tokens, drawn over the images."""
    settings, module = ctx.settings, ctx.module
    tokens = [parse_token(t) for t in settings.tokens]
    if not tokens:
        raise ValueError("relevance.tokens must name at least one token: sink, nonsink or a feature index")
    choice("relevance.heads", settings.heads, Heads)
    layer = settings.get("layer")
    if layer is not None and not isinstance(layer, int):
        raise ValueError(f"relevance.layer must be null (the feature layer) or a block index, got {layer!r}")
    hf, family = module.hf, module.family
    seen: set[str] = set()
    panels = {token: [] for token in tokens}
    pictures = {token: [] for token in tokens}  # each panel's image as the ViT saw it, under its maps
    stats = {token: [] for token in tokens}
    fallbacks = 0
    for batch in ctx.batches():
        if len(seen) >= settings.max_images:
            break
        captured = capture(hf, family, batch, layer)
        visual = captured.visual
        sinks = visual.patch_sinks(module.detector) if module.detector is not None else None
        chosen = {token: choose_targets(visual.features, visual.lengths, sinks, token) for token in tokens}
        images = [image.numpy() for image in family.seen_images(batch, module.processor)]
        norms = token_norms(visual.features)
        for i, name in enumerate(image_names(batch)):
            if name in seen or len(seen) >= settings.max_images:
                continue
            seen.add(name)
            fallbacks += "sink" in chosen and chosen["sink"][1][i]
            for token, (targets, fell_back) in chosen.items():
                target = targets[i]
                maps, cell = captured.column(i, target), captured.cell(i, target)
                stats[token].append([spread(m, cell) for m in maps])
                is_sink = bool(sinks[i, target]) if sinks is not None else False
                drawn = maps if settings.heads == "all" else maps.mean(dim=0, keepdim=True)
                panels[token].append(
                    {
                        "image": name,
                        "kind": "sink" if is_sink else "highest-norm (no sink)" if fell_back[i] else "non-sink",
                        "feature": target,
                        "norm": float(norms[i, target]),
                        "cell": list(cell) if cell is not None else None,
                        "maps": drawn.cpu().tolist(),  # [heads or 1][rows][cols]: what the figure draws
                    }
                )
                pictures[token].append(images[i])
    if not seen:
        raise ValueError("relevance: the dataset gave no images")
    if fallbacks:
        log.warning(
            "relevance: %d of %d images have no ViT sink by the detector; their highest-norm token is "
            "mapped instead (simulated sinks are planted after the ViT and never seen by its attention)",
            fallbacks,
            len(seen),
        )
    block = family.feature_block(hf) if layer is None else layer % len(family.vision_attentions(hf))
    summary = {
        "caption": ctx.figure_caption(f"{len(seen)} images"),
        "model": module.source,
        "images": len(seen),
        "sink_fallbacks": fallbacks,
        "layer": block,
        "tokens": {},
    }
    figures = {}
    for token in tokens:
        per_head = torch.tensor(stats[token]).nanmean(dim=0)  # [heads, 2]: (entropy, distance) over images
        summary["tokens"][str(token)] = {
            "entropy": float(per_head[:, 0].mean()),
            "distance": float(per_head[:, 1].mean()),
            "per_head": {
                f"head_{h}": {"entropy": float(e), "distance": float(d)} for h, (e, d) in enumerate(per_head.tolist())
            },
            "panels": panels[token],
        }
        what = f"ViT block {block}: attention every patch pays to the {token} token (outlined)"
        figures[f"relevance_{token}"] = plot_relevance(panels[token], pictures[token], what, summary["caption"])
    return ctx.write(summary, figures)


ANALYSES.register("relevance", Analysis(run))
