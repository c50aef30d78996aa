"""`analyze.py task=massive_dims`: the LLM dimensions where visual sink tokens spike (docs/paper.md#massive-dimensions).

Each visual token's hidden state entering LLM layer l (`output_hidden_states[l]`, l = 0 is the embedding) is
RMS-normalised, h / rms(h), so a value reads as "times the token's typical magnitude". Per layer the summary
ranks dimensions by mean |h / rms(h)| over ViT-sink tokens (the detector on ViT features) and over the other
visual tokens. A token is *massive* when, at some layer >= `min_layer`, a dimension (any, or only the `dims`
given: VAR's criterion, tau = 20 on {1415, 2533} for Llama-2-7B) exceeds `tau`. Massive tokens that are ViT
sinks are *propagated* sinks; massive tokens that are not are *LLM-emerged* sinks; each group's dimensions are
ranked by mean |h / rms(h)| over its tokens and layers >= `min_layer` (the paper: {982, 2494, 3263} vs
{1415, 2533} on LLaVA-1.5-7B).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.colors import LogNorm
from omegaconf import DictConfig
from rich.console import Console

from sinkflow.analysis.capture import visual_layer_inputs
from sinkflow.analysis.context import AnalysisContext, VisualTokens, visual_tokens
from sinkflow.analysis.task import ANALYSES, Analysis
from sinkflow.models.build import decoder_layers
from sinkflow.module import SinkflowModule
from sinkflow.plotting import pyplot, titled

plt = pyplot()


def rms_normalise(states: torch.Tensor) -> torch.Tensor:
    """h / rms(h) over the last dimension (RMSNorm without its learned scale)."""
    return states / states.pow(2).mean(dim=-1, keepdim=True).sqrt().clamp_min(torch.finfo(states.dtype).tiny)


@dataclass
class MassiveCriterion:
    """A token is massive at layer l >= `min_layer` if its peak, the max over `dims` (all when None) of
    |h / rms(h)|, is > `tau`."""

    tau: float = 20.0
    min_layer: int = 2
    dims: list[int] | None = None

    def __post_init__(self):
        if self.tau <= 0:
            raise ValueError(f"massive_dims.tau must be > 0, got {self.tau}")
        if self.min_layer < 0:
            raise ValueError(f"massive_dims.min_layer must be >= 0, got {self.min_layer}")
        self.dims = list(self.dims) if self.dims is not None else None

    def check_depth(self, n_layers: int, key: str) -> None:
        """Refuse a `min_layer` that leaves none of the LLM's `n_layers` layers to judge."""
        if self.min_layer >= n_layers:
            raise ValueError(
                f"{key}.min_layer={self.min_layer} leaves none of the LLM's {n_layers} layers (layers "
                f"0-{n_layers - 1}; VAR's 2 is for 32-layer LLMs)"
            )

    def peaks(self, layer: int, normalised: torch.Tensor) -> torch.Tensor:
        """[...]: each token's largest |h / rms(h)| over the judged dims of one layer's normalised states [..., D]
        (zero below `min_layer`, which is not judged)."""
        if layer < self.min_layer:
            return torch.zeros(normalised.shape[:-1], dtype=normalised.dtype, device=normalised.device)
        if self.dims is not None and max(self.dims) >= normalised.shape[-1]:
            raise ValueError(f"massive_dims.dims={self.dims} exceeds the LLM's {normalised.shape[-1]} dimensions")
        chosen = normalised if self.dims is None else normalised[..., self.dims]
        return chosen.abs().amax(dim=-1)


class MassiveActivations:
    """Per-batch reducer of visual-token layer inputs: massive flags and per-layer |h / rms(h)| sums.

    Passed to `visual_layer_inputs`; after the forward, `massive` [n_images, S] says which tokens spiked at some
    layer, `peak` is the largest judged |h / rms(h)| of any token (what `tau` is compared with) and `profile`
    [n_images, S, D] holds each token's |h / rms(h)| summed over layers >= min_layer.
    """

    def __init__(self, criterion: MassiveCriterion, tokens: VisualTokens, n_layers: int):
        self.criterion, self.tokens = criterion, tokens
        self.massive = torch.zeros_like(tokens.valid)
        self.peak = 0.0
        self.profile: torch.Tensor | None = None
        self.layer_sums: torch.Tensor | None = None  # [n_layers, 2, D]: ViT sinks, other visual tokens
        self.n_layers = n_layers

    def __call__(self, layer: int, states: torch.Tensor) -> None:
        normalised = rms_normalise(states).abs()
        valid = self.tokens.valid
        peaks = self.criterion.peaks(layer, normalised).masked_fill(~valid, 0)
        self.massive |= peaks > self.criterion.tau
        self.peak = max(self.peak, float(peaks.max()))
        if self.layer_sums is None:
            self.layer_sums = normalised.new_zeros(self.n_layers, 2, normalised.shape[-1])
            self.profile = torch.zeros_like(normalised)
        sinks = self.tokens.sinks & valid
        self.layer_sums[layer, 0] += normalised[sinks].sum(dim=0)
        self.layer_sums[layer, 1] += normalised[~sinks & valid].sum(dim=0)
        if layer >= self.criterion.min_layer:
            self.profile += normalised


def measure(
    module: SinkflowModule, batch: dict, criterion: MassiveCriterion
) -> tuple[VisualTokens, MassiveActivations]:
    """One prompt forward (hidden states of image tokens do not depend on later tokens) with the reducer on."""
    tokens = visual_tokens(module, batch)
    layers = len(decoder_layers(module.hf))
    reducer = MassiveActivations(criterion, tokens, layers)
    with visual_layer_inputs(module.hf, tokens.rows, tokens.columns, reducer):
        module.hf(**tokens.inputs, use_cache=False, logits_to_keep=1)
    return tokens, reducer


def top_dims(values: torch.Tensor, k: int) -> list[dict]:
    """The k largest entries of a [D] profile as [{"dim", "value"}], largest first."""
    best = torch.topk(values, min(k, values.numel()))
    return [{"dim": int(d), "value": float(v)} for v, d in zip(best.values, best.indices)]


def preflight(settings: DictConfig, n_layers: int) -> None:
    """The settings checks that need only the LLM's depth, run before the model and data load."""
    MassiveCriterion(tau=settings.tau, min_layer=settings.min_layer, dims=settings.dims).check_depth(
        n_layers, "massive_dims"
    )


def run(ctx: AnalysisContext) -> dict:
    """Rank massive dimensions per layer (ViT sinks vs others) and per sink group (propagated vs LLM-emerged)."""
    settings = ctx.settings
    criterion = MassiveCriterion(tau=settings.tau, min_layer=settings.min_layer, dims=settings.dims)
    n_layers = len(decoder_layers(ctx.module.hf))
    criterion.check_depth(n_layers, "massive_dims")
    layer_sums, counts = None, torch.zeros(2)
    group_sums, group_counts = None, {"propagated": 0, "emerged": 0}
    tokens_seen = sinks_seen = samples = 0
    peak = 0.0
    planted_match: bool | None = None  # simulated sinks: are the ViT sinks exactly the planted tokens?
    for batch in ctx.batches():
        tokens, reducer = measure(ctx.module, batch, criterion)
        samples, peak = samples + len(batch["meta"]), max(peak, reducer.peak)
        valid, sinks = tokens.valid, tokens.sinks & tokens.valid
        layer_sums = reducer.layer_sums.cpu() + (0 if layer_sums is None else layer_sums)
        counts += torch.tensor([sinks.sum(), (valid & ~sinks).sum()])
        groups = {"propagated": reducer.massive & sinks, "emerged": reducer.massive & ~sinks & valid}
        if group_sums is None:
            group_sums = {g: torch.zeros(reducer.profile.shape[-1]) for g in groups}
        for name, mask in groups.items():
            group_sums[name] += reducer.profile[mask].sum(dim=0).cpu()
            group_counts[name] += int(mask.sum())
        tokens_seen, sinks_seen = tokens_seen + int(valid.sum()), sinks_seen + int(sinks.sum())
        if tokens.planted is not None:
            planted_match = planted_match is not False and torch.equal(sinks, tokens.planted & valid)
    if layer_sums is None:
        raise ValueError("massive_dims saw no batch: the dataset's evaluation sets are empty (check max_samples)")
    means = layer_sums / counts.clamp_min(1)[None, :, None]  # [layers, 2, D]
    judged = n_layers - criterion.min_layer
    summary = {
        "caption": ctx.figure_caption(f"{samples} samples, {tokens_seen} visual tokens"),
        "criterion": {"tau": criterion.tau, "min_layer": criterion.min_layer, "dims": criterion.dims},
        "visual_tokens": tokens_seen,
        "vit_sinks": sinks_seen,
        "peak": peak,
        "massive_tokens": sum(group_counts.values()),
        "per_layer": [
            {
                "layer": layer,
                "vit_sinks": top_dims(means[layer, 0], settings.top_k) if counts[0] else [],
                "non_sinks": top_dims(means[layer, 1], settings.top_k),
            }
            for layer in range(n_layers)
        ],
        "groups": {
            name: {
                "tokens": group_counts[name],
                "dims": top_dims(group_sums[name] / (group_counts[name] * judged), settings.top_k)
                if group_counts[name]
                else [],
            }
            for name in group_sums
        },
        "heatmap": heatmap_data(means, counts, criterion.dims, settings.top_k),
    }
    if planted_match is not None:
        summary["vit_sinks_equal_planted"] = planted_match
    summary["propagated_dims"] = [d["dim"] for d in summary["groups"]["propagated"]["dims"]]
    summary["emerged_dims"] = [d["dim"] for d in summary["groups"]["emerged"]["dims"]]
    Console().print(
        f"massive dims: propagated ViT sinks {summary['propagated_dims']} "
        f"({group_counts['propagated']} tokens), LLM-emerged {summary['emerged_dims']} "
        f"({group_counts['emerged']} tokens)"
    )
    return ctx.write(summary, {"massive_dims": figure(summary)})


def heatmap_data(means: torch.Tensor, counts: torch.Tensor, dims: list[int] | None, k: int) -> dict:
    """What the heatmap shows: mean |h / rms(h)| [layer][dim] per group (None for a group without tokens) on the
    criterion's `dims` when given, else on the dims that rank in the top k of some layer for either group."""
    shown = [g for g in range(2) if counts[g] > 0]
    if dims is None:
        dims = sorted(
            {int(d) for g in shown for layer in means[:, g] for d in torch.topk(layer, min(k, len(layer))).indices}
        )
        how = f"the top {k} of each layer, ViT sinks or others (massive_dims.top_k)"
    else:
        how = "massive_dims.dims, the dims the criterion judges"
    return {
        "dims": dims,
        "dims_chosen": how,
        **{
            name: means[:, g, dims].tolist() if g in shown else None
            for g, name in enumerate(("vit_sinks", "non_sinks"))
        },
    }


def figure(summary: dict) -> plt.Figure:
    """Layer x dimension heatmaps of mean |h / rms(h)| for ViT sinks and for other visual tokens, log-scaled colours
    whose scale reaches tau (marked on the colour bar and outlined on the cells above it), the first judged layer
    marked, and how many tokens crossed tau; drawn from the summary alone."""
    data, criterion = summary["heatmap"], summary["criterion"]
    tau, dims = criterion["tau"], data["dims"]
    groups = [(name, data[name]) for name in ("vit_sinks", "non_sinks") if data[name] is not None]
    n_layers = len(groups[0][1])
    fig, axes = plt.subplots(
        1, len(groups), figsize=(3 + 0.4 * len(dims) * len(groups), 3.5 + 0.25 * n_layers), squeeze=False
    )
    values = np.array([values for _, values in groups])  # [groups, layers, dims]
    positive = values[values > 0]
    norm = LogNorm(vmin=min(float(positive.min()), tau), vmax=max(float(values.max()), tau))  # tau on the scale
    for ax, (name, group_values) in zip(axes[0], groups):
        image = ax.imshow(np.array(group_values), aspect="auto", origin="lower", cmap="magma", norm=norm)
        if (np.array(group_values) > tau).any():
            ax.contour(np.array(group_values), levels=[tau], colors="cyan", linewidths=1)
        ax.axhline(criterion["min_layer"] - 0.5, color="white", linestyle=":", linewidth=1)
        ax.set_xticks(np.arange(len(dims)), [str(d) for d in dims], rotation=90, fontsize=7)
        ax.set_yticks(np.arange(n_layers), [str(layer) for layer in range(n_layers)], fontsize=7)
        ax.set_xlabel("LLM hidden dimension")
        ax.set_ylabel(f"LLM layer (its input; judged from {criterion['min_layer']}, dotted)")
        tokens = summary["vit_sinks"] if name == "vit_sinks" else summary["visual_tokens"] - summary["vit_sinks"]
        ax.set_title(f"{'ViT sinks' if name == 'vit_sinks' else 'other visual tokens'} ({tokens} tokens)", fontsize=9)
    bar = fig.colorbar(image, ax=axes[0].tolist(), label="mean |h / rms(h)| (times the token's RMS)")
    bar.ax.axhline(tau, color="cyan", linewidth=2)
    bar.ax.text(
        0.5,
        tau,
        f"tau={tau:g}",
        color="cyan",
        ha="center",
        va="bottom",
        fontsize=7,
        transform=bar.ax.get_yaxis_transform(),
    )
    judged = "all dims" if criterion["dims"] is None else f"dims {criterion['dims']}"
    if summary["massive_tokens"]:
        verdict = (
            f"{summary['massive_tokens']} massive tokens (max |h / rms(h)| = {summary['peak']:.3g} > tau = {tau:g})"
        )
    else:
        verdict = f"nothing is massive (max |h / rms(h)| = {summary['peak']:.3g} <= tau = {tau:g}, {judged})"
    what = f"mean |h / rms(h)| of visual tokens per LLM layer: {verdict}\ncolumns: {data['dims_chosen']}"
    return titled(fig, what, summary["caption"])


ANALYSES.register("massive_dims", Analysis(run, preflight=preflight))
