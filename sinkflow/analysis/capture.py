"""Hooks that capture only what an analysis needs from the LLM: a few attention rows, visual-token states.

Never all layers' [heads, T, T] maps: `AttentionRows` recomputes the post-softmax attention of the chosen query
rows from each layer's post-RoPE queries and keys (what `output_attentions` would give for those rows, at
O(Q x T) per layer instead of O(T x T) for every layer), and `visual_layer_inputs` hands each decoder layer's
input at the visual columns to a callback that reduces it on the spot.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from sinkflow.models.attention_patch import recording_attention
from sinkflow.models.build import decoder_layers


def layer_range(n_layers: int, layers, setting: str) -> range:
    """LLM layers to use: null = all, or [start, end) with Python slice semantics (negative from the end)."""
    if layers is None:
        return range(n_layers)
    if len(layers) != 2:
        raise ValueError(f"{setting} must be null or [start, end) with start < end, got {list(layers)}")
    chosen = range(n_layers)[slice(*layers)]
    if len(chosen) == 0:
        raise ValueError(f"{setting}={list(layers)} selects none of the LLM's {n_layers} layers")
    return chosen


class AttentionRows:
    """Sum over the chosen layers of the head-averaged attention that query rows give to every key.

    Use as a context manager around one full-sequence forward (no KV cache) of `attention_mask` [B, T] inputs;
    `queries` [B, Q] are the query columns (entries where `query_valid` is false are ignored by callers).
    The probabilities are softmax(q k^T * scaling) over the keys the layer's mask allows (the causal, unpadded ones
    when the layer gets no mask) in float32 — exactly the rows eager attention returns with `output_attentions=True`.
    While capturing, the chosen layers run SDPA.
    """

    def __init__(self, model: nn.Module, layers: range, queries: torch.Tensor, attention_mask: torch.Tensor):
        self.model, self.layers = model, layers
        self.queries = queries
        keys = torch.arange(attention_mask.shape[1], device=queries.device)
        self.allowed = (keys <= queries[..., None]) & attention_mask[:, None, :].bool()  # [B, Q, T]
        self.total = torch.zeros(self.allowed.shape, dtype=torch.float32, device=queries.device)

    def __enter__(self) -> AttentionRows:
        attentions = [decoder_layers(self.model)[i].self_attn for i in self.layers]
        self._recording = recording_attention(attentions, self.record)
        self._recording.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._recording.__exit__(*exc)

    def record(self, query: torch.Tensor, key: torch.Tensor, attention_mask, scaling: float | None) -> None:
        """Add one layer: query [B, H, T, d] and key [B, H_kv, T, d], both after RoPE."""
        batch, heads, _, dim = query.shape
        groups, n_queries = heads // key.shape[1], self.queries.shape[1]
        rows = query.gather(2, self.queries[:, None, :, None].expand(batch, heads, n_queries, dim)).float()
        # Head h reads key head h // groups (repeat_kv): group the query heads instead of copying the keys.
        rows = rows.view(batch, key.shape[1], groups * n_queries, dim)
        scores = rows @ key.float().transpose(-1, -2) * (dim**-0.5 if scaling is None else scaling)
        allowed = self.allowed
        if attention_mask is not None:  # the layer's own mask [B, 1, T, T]: e.g. Gemma 3's sliding window
            layer = attention_mask[:, 0] if attention_mask.dtype == torch.bool else attention_mask[:, 0] == 0
            allowed = layer.expand(batch, -1, -1).gather(1, self.queries[..., None].expand(-1, -1, layer.shape[-1]))
        scores = scores.view(batch, heads, n_queries, -1).masked_fill(~allowed[:, None], -torch.inf)
        self.total += scores.softmax(dim=-1).mean(dim=1)


@contextmanager
def visual_layer_inputs(
    model: nn.Module, rows: torch.Tensor, columns: torch.Tensor, reduce: Callable[[int, torch.Tensor], None]
) -> Iterator[None]:
    """During forwards inside, call `reduce(layer, states)` with each decoder layer's input at the visual tokens.

    `states` [n_images, S, D] float32 are the layer inputs at `rows[i]`, `columns[i, s]` — what
    `output_hidden_states=True` returns as `hidden_states[layer]` there, without keeping every layer's [B, T, D].
    """

    def hook(layer: int):
        def capture(_module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            reduce(layer, hidden[rows[:, None], columns].float())

        return capture

    handles = [
        layer.register_forward_pre_hook(hook(i), with_kwargs=True) for i, layer in enumerate(decoder_layers(model))
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
