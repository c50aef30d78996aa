"""`var`: Visual Attention Redistribution, "See What You Are Told: Visual Attention Sink in LMMs" (arXiv 2503.03321),
training-free.

1. Sinks inside the LLM: a token is a sink at layer l when, in the hidden state entering l (RMS-normalised without
   the layer's weight), one of the model's sink dimensions reaches `tau`: max_d |x[d] / rms(x)| >= tau. Found over the
   prompt in its forward and kept while decoding. With `sink_dims: null` the sinks are the ViT sinks the detector
   found (sinkflow's variant for models whose sink dimensions are not known, e.g. the tiny ones).
2. Image-centric heads, per head and query row: the attention on visual tokens is at least `min_visual_mass` and the
   visual sinks' share of it at most `max_sink_share`.
3. In those rows (the text after the image and every generated token), post-softmax: every sink (visual or text,
   e.g. BOS) keeps `sink_keep` of its attention, and what the sinks gave up goes to the visual non-sink tokens in
   proportion to their attention; rows still sum to 1.

Defaults are the official code's LLaVA-1.5-7B run (tau 20, dims 1415 and 2533, sink_keep 0.6 (the paper's p = 0.4
moved), max_sink_share 0.5, min_visual_mass 0.2, layers 2-31 of 32: the code's last-layer exception never takes
effect). The sinks are found again for every batch (the released code keeps the first sample's).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sinkflow.checks import number
from sinkflow.interventions.base import AttentionCall, AttentionIntervention, holds_prompt
from sinkflow.models.build import decoder_layers
from sinkflow.pathway import LlmColumns


def massive_tokens(hidden: torch.Tensor, dims: Sequence[int], tau: float) -> torch.Tensor:
    """[B, T] bool: tokens whose RMS-normalised state (no weight, float32, eps 1e-6) reaches `tau` in absolute value on
    one of `dims`."""
    x = hidden.float()
    normalised = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    return normalised[..., list(dims)].abs().amax(-1) >= tau


class Var(AttentionIntervention, name="var"):
    """Image-centric rows move part of the sinks' attention to the visual non-sink tokens."""

    edits_rows = True

    def __init__(
        self,
        sink_dims: Sequence[int] | None = (1415, 2533),
        tau: float = 20.0,
        sink_keep: float = 0.6,
        max_sink_share: float = 0.5,
        min_visual_mass: float = 0.2,
        layers: Sequence[int] | None = tuple(range(2, 32)),
        reference_depth: int | None = 32,
    ):
        super().__init__(layers, reference_depth)
        self.sink_dims = None if sink_dims is None else [int(d) for d in sink_dims]
        self.tau = number("intervention.tau", tau, above=0)
        self.sink_keep = number("intervention.sink_keep", sink_keep, at_least=0, at_most=1)
        self.max_sink_share = number("intervention.max_sink_share", max_sink_share, at_least=0, at_most=1)
        self.min_visual_mass = number("intervention.min_visual_mass", min_visual_mass, at_least=0, at_most=1)
        self.needs_sinks = sink_dims is None  # the ViT sinks stand in for the LLM's
        self.llm_sinks: dict[int, torch.Tensor] = {}  # per layer, [B, prompt columns] while acting

    def hooks(self, model: nn.Module, columns: LlmColumns) -> list:
        if self.sink_dims is None:
            return []
        layers = decoder_layers(model)
        width = layers[0].self_attn.config.hidden_size
        outside = [d for d in self.sink_dims if not 0 <= d < width]
        if outside:
            raise ValueError(
                f"intervention.sink_dims {outside} outside the LLM's {width} hidden dimensions (the defaults are "
                "LLaVA-1.5-7B's; null: the ViT sinks the detector finds)"
            )
        return [
            layers[i].register_forward_pre_hook(self._finding(i, columns), with_kwargs=True)
            for i in self.layer_indices(len(layers))
        ]

    def forget(self) -> None:
        self.llm_sinks.clear()

    def _finding(self, index: int, columns: LlmColumns):
        """A pre-hook on decoder layer `index`: in the forward over the prompt, the prompt's sinks in the states
        entering it."""

        def find(layer, args, kwargs):
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            if holds_prompt(hidden, columns):
                self.llm_sinks[index] = massive_tokens(hidden[:, : columns.visual.shape[1]], self.sink_dims, self.tau)

        return find

    def touched(self, call: AttentionCall) -> torch.Tensor:
        return call.queries[None, :] >= call.image_end[:, None]

    def sinks(self, call: AttentionCall) -> torch.Tensor:
        """[B, K] bool: the sinks among the call's keys."""
        if self.sink_dims is None:
            return call.sinks
        found = self.llm_sinks[call.layer]
        padded = torch.nn.functional.pad(found, (0, max(int(call.keys[-1]) + 1 - found.shape[1], 0)))
        return padded[:, call.keys]

    def edit_weights(self, weights: torch.Tensor, call: AttentionCall, rows: torch.Tensor) -> torch.Tensor:
        sinks = self.sinks(call)[:, None, None, :]  # [B, 1, 1, K]
        visual = call.visual[:, None, None, :]
        visual_sinks, others = visual & sinks, visual & ~sinks
        on_visual = (weights * visual).sum(-1, keepdim=True)
        share = (weights * visual_sinks).sum(-1, keepdim=True) / (on_visual + 1e-6)
        on_others = (weights * others).sum(-1, keepdim=True)
        chosen = (
            (share <= self.max_sink_share)
            & (on_visual >= self.min_visual_mass)
            & visual_sinks.any(-1, keepdim=True)
            & (on_others > 0)
        )
        budget = (1 - self.sink_keep) * (weights * sinks).sum(-1, keepdim=True)
        moved = torch.where(sinks, weights * self.sink_keep, weights)
        moved = moved + budget * torch.where(others, weights, 0.0) / on_others.clamp_min(1e-12)
        return torch.where(chosen, moved, weights)
