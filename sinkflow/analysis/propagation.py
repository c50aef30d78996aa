"""`analyze.py task=propagation`: how much LLM attention each visual token receives, against its ViT norm.

The paper's Fig. 3A (docs/paper.md#propagation-into-the-llm): bin visual tokens by ViT norm (bin width 5) and
average the attention each bin receives from the LLM's queries; compare token types. The reported table on
LLaVA-1.5-7B is 0.1532 % (non-sink visual), 1.13 % (ViT sink), 1.27 % (LLM-emerged sink).

- Queries: `generated` (default) greedily generates `max_new_tokens` per prompt, then runs one forward of
  prompt + answer and takes the rows of the answer tokens (up to and including the first end-of-sequence);
  `prompt` takes the rows of the text after the last image. Positions follow what `generate` used: 1-D ids
  counted over real tokens (left padding), or the family's M-RoPE ids, each axis continued from the prompt's last
  id (what `generate` does).
- Attention: post-softmax probability from a query to a visual token, averaged over heads, the `layers` range
  and the row's queries (`capture.AttentionRows`: only those rows are computed, never full maps).
- Types: *ViT sink* = the configured detector on ViT features; *LLM-emerged sink* = not a ViT sink but massive
  in the LLM (`massive_dims.MassiveCriterion`, settings under `emerged`: some layer >= min_layer has a dimension
  with |h / rms(h)| > tau); *non-sink* = neither.
- ViT norm of a token: `context.token_vit_norms` (for merged Qwen tokens, as the family judges sinks).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from omegaconf import DictConfig
from rich.console import Console

from sinkflow.analysis.capture import AttentionRows, layer_range, visual_layer_inputs
from sinkflow.analysis.context import AnalysisContext, VisualTokens, visual_tokens
from sinkflow.analysis.massive_dims import MassiveActivations, MassiveCriterion
from sinkflow.analysis.task import ANALYSES, Analysis
from sinkflow.checks import choice
from sinkflow.models.build import decoder_layers
from sinkflow.module import SinkflowModule
from sinkflow.plotting import pyplot, titled

plt = pyplot()
Queries = Literal["generated", "prompt"]  # the answer's tokens, or the prompt text after the image


def query_inputs(
    module: SinkflowModule, tokens: VisualTokens, queries: str, max_new_tokens: int
) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """(LLM inputs of the sequence the queries belong to, query columns [B, Q], which are real [B, Q])."""
    inputs = dict(tokens.inputs)
    mask = inputs["attention_mask"]
    length = mask.shape[1]
    if queries == "prompt":
        # Text after each row's last image (a row without an image keeps no queries).
        after = torch.full((mask.shape[0],), length, device=mask.device)
        after[tokens.rows] = 0
        after = after.scatter_reduce(0, tokens.rows, tokens.ends, reduce="amax")
        n_queries = int((length - after).max())
        columns = (length - n_queries + torch.arange(n_queries, device=mask.device)).expand(mask.shape[0], -1)
        if "position_ids" not in inputs:
            inputs["position_ids"] = generation_positions(mask)
        return inputs, columns.contiguous(), columns >= after[:, None]
    tokenizer = module.processor.tokenizer
    generated = module.hf.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    generated = generated[:, -max_new_tokens:] if generated.shape[1] > max_new_tokens else generated
    ended = (generated == tokenizer.eos_token_id).long().cumsum(dim=1)
    real = (ended == 0) | ((ended == 1) & (generated == tokenizer.eos_token_id))  # up to the first EOS
    n_new = generated.shape[1]
    embeds = module.hf.get_input_embeddings()(generated).to(inputs["inputs_embeds"].dtype)
    full_mask = torch.cat([mask, real.to(mask.dtype)], dim=1)
    positions = inputs.get("position_ids")
    if positions is None:
        positions = generation_positions(full_mask)
    else:  # M-RoPE: generate continues every axis from the prompt's last id (left padding: the last column)
        steps = positions[..., -1:] + 1 + torch.arange(n_new, device=mask.device)
        positions = torch.cat([positions, steps], dim=2)
    inputs.update(
        inputs_embeds=torch.cat([inputs["inputs_embeds"], embeds], dim=1),
        attention_mask=full_mask,
        position_ids=positions,
    )
    columns = (length + torch.arange(n_new, device=mask.device)).expand(mask.shape[0], -1).contiguous()
    return inputs, columns, real


def generation_positions(mask: torch.Tensor) -> torch.Tensor:
    """1-D position ids as `generate` builds them for left-padded rows: counted over real tokens."""
    return (mask.long().cumsum(dim=-1) - 1).masked_fill(mask == 0, 1)


def measure(module: SinkflowModule, batch: dict, settings, criterion: MassiveCriterion) -> dict[str, torch.Tensor]:
    """Per visual token of the batch (flattened over images, valid tokens only): ViT norm, attention received,
    ViT-sink and LLM-emerged flags, and the planted flag when simulated sinks are on."""
    tokens = visual_tokens(module, batch)
    inputs, columns, real = query_inputs(module, tokens, settings.queries, settings.max_new_tokens)
    layers = layer_range(len(decoder_layers(module.hf)), settings.layers, "propagation.layers")
    massive = MassiveActivations(criterion, tokens, len(decoder_layers(module.hf)))
    with (
        AttentionRows(module.hf, layers, columns, inputs["attention_mask"]) as rows,
        visual_layer_inputs(module.hf, tokens.rows, tokens.columns, massive),
    ):
        module.hf(**inputs, use_cache=False, logits_to_keep=1)
    n_real = real.sum(dim=1)
    per_row = (rows.total * real[..., None]).sum(dim=1) / (n_real.clamp_min(1)[:, None] * len(layers))  # [B, T]
    attention = per_row[tokens.rows[:, None], tokens.columns]
    keep = tokens.valid & (n_real[tokens.rows] > 0)[:, None]
    out = {
        "norms": tokens.norms[keep],
        "attention": attention[keep],
        "vit_sink": tokens.sinks[keep],
        "emerged": (massive.massive & ~tokens.sinks)[keep],
    }
    if tokens.planted is not None:
        out["planted"] = tokens.planted[keep]
    return {k: v.cpu() for k, v in out.items()}


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks with ties sharing their mean rank (what Spearman's correlation needs)."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    return (np.bincount(inverse, weights=ranks) / counts)[inverse]


def correlation(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson's r, or None when either side is constant (or there are fewer than two points)."""
    if len(x) < 2 or x.std() == 0 or y.std() == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def mean_and_sem(values: np.ndarray) -> tuple[float | None, float | None]:
    """(mean, standard error of the mean) in %, of attention probabilities; None where undefined (no value, or one
    value for the error)."""
    if not len(values):
        return None, None
    sem = float(100 * values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else None
    return float(100 * values.mean()), sem


def summarise(
    norms: torch.Tensor, attention: torch.Tensor, vit_sink: torch.Tensor, emerged: torch.Tensor, bin_width: float
) -> dict:
    """Binned mean attention by ViT norm (non-empty bins), mean attention per token type (in %, with the standard
    error of the mean), norm-attention correlations."""
    if bin_width <= 0:
        raise ValueError(f"propagation.bin_width must be > 0, got {bin_width}")
    norms_np, attention_np = norms.double().numpy(), attention.double().numpy()
    types = {"non_sink": ~vit_sink & ~emerged, "vit_sink": vit_sink, "emerged_sink": emerged}
    per_type = {}
    for name, mask in types.items():
        mean, sem = mean_and_sem(attention_np[mask.numpy()])
        per_type[name] = {"tokens": int(mask.sum()), "mean_attention_percent": mean, "sem_percent": sem}
    index = np.floor(norms_np / bin_width).astype(np.int64)
    bins = []
    for b in np.unique(index):
        mean, sem = mean_and_sem(attention_np[index == b])
        bins.append(
            {
                "norm_from": float(b * bin_width),
                "norm_to": float((b + 1) * bin_width),
                "tokens": int((index == b).sum()),
                "mean_attention_percent": mean,
                "sem_percent": sem,
            }
        )
    base, sink = per_type["non_sink"]["mean_attention_percent"], per_type["vit_sink"]["mean_attention_percent"]
    return {
        "tokens": len(norms_np),
        "mean_attention_percent": per_type,
        "vit_sink_over_non_sink": sink / base if sink is not None and base else None,
        "correlation": {
            "pearson": correlation(norms_np, attention_np),
            "spearman": correlation(average_ranks(norms_np), average_ranks(attention_np)),
        },
        "bins": bins,
    }


def preflight(settings: DictConfig, n_layers: int) -> None:
    """The settings checks that need only the LLM's depth, run before the model and data load."""
    choice("propagation.queries", settings.queries, Queries)
    emerged = settings.emerged
    MassiveCriterion(tau=emerged.tau, min_layer=emerged.min_layer, dims=emerged.dims).check_depth(
        n_layers, "propagation.emerged"
    )
    layer_range(n_layers, settings.layers, "propagation.layers")


def run(ctx: AnalysisContext) -> dict:
    """Attention received by visual tokens from the LLM's queries, by ViT norm and by token type."""
    settings = ctx.settings
    choice("propagation.queries", settings.queries, Queries)
    emerged = settings.emerged
    criterion = MassiveCriterion(tau=emerged.tau, min_layer=emerged.min_layer, dims=emerged.dims)
    parts: dict[str, list[torch.Tensor]] = {}
    samples = 0
    for batch in ctx.batches():
        samples += len(batch["meta"])
        for key, value in measure(ctx.module, batch, settings, criterion).items():
            parts.setdefault(key, []).append(value)
    if not parts:
        raise ValueError("propagation saw no batch: the dataset's evaluation sets are empty (check max_samples)")
    seen = {k: torch.cat(v) for k, v in parts.items()}
    n_layers = len(decoder_layers(ctx.module.hf))
    layers = layer_range(n_layers, settings.layers, "propagation.layers")
    summary = {
        "caption": ctx.figure_caption(f"{samples} samples, {len(seen['norms'])} visual tokens"),
        "queries": settings.queries,
        "layers": [layers.start, layers.stop],
        "bin_width": settings.bin_width,
        "emerged_criterion": {"tau": criterion.tau, "min_layer": criterion.min_layer, "dims": criterion.dims},
        **summarise(seen["norms"], seen["attention"], seen["vit_sink"], seen["emerged"], settings.bin_width),
    }
    if "planted" in seen:  # simulated sinks: does the detector report exactly the planted tokens?
        summary["vit_sinks_equal_planted"] = bool(torch.equal(seen["vit_sink"], seen["planted"]))
    shares = summary["mean_attention_percent"]
    Console().print(
        "mean attention per visual token (%): "
        + ", ".join(
            f"{name} {v['mean_attention_percent']:.4g} ({v['tokens']})"
            for name, v in shares.items()
            if v["mean_attention_percent"] is not None
        )
    )
    return ctx.write(summary, {"propagation": figure(summary)})


def gapped(bins: list[dict]) -> tuple[list[float], list[float], list[float]]:
    """(bin centres, means, standard errors) of the non-empty bins, a NaN point between two bins that are not
    adjacent, so that the line breaks across the empty ones instead of joining them."""
    x, y, error = [], [], []
    for previous, current in zip([None, *bins], bins):
        if previous is not None and previous["norm_to"] != current["norm_from"]:
            x.append((previous["norm_to"] + current["norm_from"]) / 2)
            y.append(math.nan)
            error.append(math.nan)
        x.append((current["norm_from"] + current["norm_to"]) / 2)
        y.append(current["mean_attention_percent"])
        error.append(math.nan if current["sem_percent"] is None else current["sem_percent"])
    return x, y, error


TYPE_COLOURS = {"non_sink": "tab:gray", "vit_sink": "tab:red", "emerged_sink": "tab:orange"}


def figure(summary: dict) -> plt.Figure:
    """Mean attention per ViT-norm bin (points with their standard error, the line broken across empty bins) and per
    token type (bars from zero with their standard error), both on linear axes, drawn from the summary alone."""
    fig, (by_norm, by_type) = plt.subplots(1, 2, figsize=(11, 4.5), gridspec_kw={"width_ratios": [2.2, 1]})
    x, y, error = gapped(summary["bins"])
    by_norm.errorbar(x, y, yerr=error, fmt="o-", color="tab:blue", markersize=3, linewidth=1, capsize=2)
    by_norm.set_ylim(bottom=0)
    by_norm.set_xlabel(f"ViT token norm (L2 of the projector input; bins of {summary['bin_width']:g})")
    by_norm.set_ylabel("mean attention received (% of a query's)")
    by_norm.set_title("by ViT norm (empty bins: gaps; bars: standard error)", fontsize=9)
    shown = [(name, v) for name, v in summary["mean_attention_percent"].items() if v["tokens"]]
    heights = [v["mean_attention_percent"] for _, v in shown]
    bars = by_type.bar(
        [f"{name}\n({v['tokens']} tokens)" for name, v in shown],
        heights,
        yerr=[math.nan if v["sem_percent"] is None else v["sem_percent"] for _, v in shown],
        color=[TYPE_COLOURS[name] for name, _ in shown],
        capsize=3,
    )
    by_type.bar_label(bars, labels=[f"{h:.3g} %" for h in heights], fontsize=8)
    by_type.set_ylim(bottom=0)
    by_type.set_xlabel("visual token type")
    by_type.set_ylabel("mean attention received (% of a query's)")
    by_type.set_title("by token type", fontsize=9)
    layers = f"LLM layers {summary['layers'][0]}-{summary['layers'][1] - 1}"
    return titled(
        fig, f"attention that {summary['queries']} queries give each visual token ({layers})", summary["caption"]
    )


ANALYSES.register("propagation", Analysis(run, preflight=preflight))
