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

from sinkflow.analysis.capture import decoder_layers, visual_layer_inputs
from sinkflow.analysis.context import AnalysisContext, VisualTokens, visual_tokens
from sinkflow.analysis.task import ANALYSES, Analysis
from sinkflow.module import SinkflowModule
from sinkflow.plotting import pyplot

plt = pyplot()


def rms_normalise(states: torch.Tensor) -> torch.Tensor:
    """h / rms(h) over the last dimension (RMSNorm without its learned scale)."""
    return states / states.pow(2).mean(dim=-1, keepdim=True).sqrt().clamp_min(torch.finfo(states.dtype).tiny)


@dataclass
class MassiveCriterion:
    """A token is massive at layer l >= `min_layer` if max over `dims` (all when None) of |h / rms(h)| > `tau`."""

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

    def spikes(self, layer: int, normalised: torch.Tensor) -> torch.Tensor:
        """[...] bool: which tokens of one layer's normalised states [..., D] are massive."""
        if layer < self.min_layer:
            return torch.zeros(normalised.shape[:-1], dtype=torch.bool, device=normalised.device)
        if self.dims is not None and max(self.dims) >= normalised.shape[-1]:
            raise ValueError(f"massive_dims.dims={self.dims} exceeds the LLM's {normalised.shape[-1]} dimensions")
        chosen = normalised if self.dims is None else normalised[..., self.dims]
        return chosen.abs().amax(dim=-1) > self.tau


class MassiveActivations:
    """Per-batch reducer of visual-token layer inputs: massive flags and per-layer |h / rms(h)| sums.

    Passed to `visual_layer_inputs`; after the forward, `massive` [n_images, S] says which tokens spiked at some
    layer and `profile` [n_images, S, D] holds each token's |h / rms(h)| summed over layers >= min_layer.
    """

    def __init__(self, criterion: MassiveCriterion, tokens: VisualTokens, n_layers: int):
        self.criterion, self.tokens = criterion, tokens
        self.massive = torch.zeros_like(tokens.valid)
        self.profile: torch.Tensor | None = None
        self.layer_sums: torch.Tensor | None = None  # [n_layers, 2, D]: ViT sinks, other visual tokens
        self.n_layers = n_layers

    def __call__(self, layer: int, states: torch.Tensor) -> None:
        normalised = rms_normalise(states).abs()
        valid = self.tokens.valid
        self.massive |= self.criterion.spikes(layer, normalised) & valid
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
    tokens_seen = sinks_seen = 0
    planted_match: bool | None = None  # simulated sinks: are the ViT sinks exactly the planted tokens?
    for batch in ctx.batches():
        tokens, reducer = measure(ctx.module, batch, criterion)
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
        "criterion": {"tau": criterion.tau, "min_layer": criterion.min_layer, "dims": criterion.dims},
        "visual_tokens": tokens_seen,
        "vit_sinks": sinks_seen,
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
    return ctx.write(summary, {"massive_dims": heatmap(means, settings.top_k, counts)})


def heatmap(means: torch.Tensor, k: int, counts: torch.Tensor) -> plt.Figure:
    """Layer x dimension heatmaps of mean |h / rms(h)| for ViT sinks and for other visual tokens, on the dims
    that rank in the top k of any layer (for either group), log-scaled colours."""
    shown = [g for g in range(2) if counts[g] > 0]
    dims = sorted(
        {int(d) for g in shown for layer in means[:, g] for d in torch.topk(layer, min(k, len(layer))).indices}
    )
    fig, axes = plt.subplots(
        1,
        len(shown),
        figsize=(2.5 + 0.4 * len(dims) * len(shown), 2.5 + 0.25 * len(means)),
        squeeze=False,
        layout="constrained",
    )
    values = means[:, :, dims].clamp_min(1e-3).numpy()
    norm = LogNorm(vmin=float(values[:, shown].min()), vmax=float(values[:, shown].max()))
    for ax, group in zip(axes[0], shown):
        image = ax.imshow(values[:, group], aspect="auto", origin="lower", cmap="magma", norm=norm)
        ax.set_xticks(np.arange(len(dims)), [str(d) for d in dims], rotation=90, fontsize=7)
        ax.set_yticks(np.arange(len(means)), [str(layer) for layer in range(len(means))], fontsize=7)
        ax.set_xlabel("LLM hidden dimension")
        ax.set_ylabel("LLM layer (input)")
        ax.set_title(("ViT sinks" if group == 0 else "other visual tokens") + f" ({int(counts[group])})")
    fig.colorbar(image, ax=axes[0].tolist(), label="mean |h / rms(h)|")
    return fig


ANALYSES.register("massive_dims", Analysis(run, preflight=preflight))
