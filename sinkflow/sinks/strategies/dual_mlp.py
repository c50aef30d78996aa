"""`dual_mlp` (DIYSink, paper §3): sink tokens and the other tokens through two projectors of the family's own
architecture, the sink block first, each block scaled by a weight (1 here; the `reweight` router learns them).

`init: copy` starts both projectors from the model's trained one (so, before any training, the LLM sees exactly
what `sink_front` gives it); `init: random` re-initialises them. The family's own projector is then unused and
frozen: only the two copies train (with the strategy's learning rate, and saved with the run).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from sinkflow.sinks.strategies.base import OrderedSinks, Routed, split_sinks

INITS = ("copy", "random")


class DualMLP(OrderedSinks, name="dual_mlp"):
    """Sink projector + non-sink projector; routed tokens are [sinks; others] per image."""

    training_free = False

    def __init__(self, init: str = "copy", order: str = "raster", position_ids: str = "contiguous"):
        super().__init__(order, position_ids)
        if init not in INITS:
            raise ValueError(f"sink_strategy.strategy.init must be one of {INITS}, got {init!r}")
        self.init = init
        self.sink_projector: nn.Module | None = None
        self.other_projector: nn.Module | None = None

    def setup(self, model: nn.Module, family) -> None:
        base = family.projector(model)
        base.requires_grad_(False)  # replaced by the two copies below
        if self.sink_projector is not None:
            return
        self.sink_projector, self.other_projector = copy.deepcopy(base), copy.deepcopy(base)
        for projector in (self.sink_projector, self.other_projector):
            projector.requires_grad_(True)
            if self.init == "random":
                for layer in projector.modules():
                    if hasattr(layer, "reset_parameters") and layer is not projector:
                        layer.reset_parameters()

    def block_weights(self, visual, batch_size: int) -> torch.Tensor:
        """[n_images, 2] weights of the (sink, other) blocks; fixed at 1 for the plain Dual-MLP."""
        return visual.features.new_ones(batch_size, 2)

    def forward(self, visual, sink_mask, project) -> Routed:
        if self.sink_projector is None:
            raise RuntimeError("dual_mlp has no projectors yet: SinkflowModule calls strategy.setup(model, family)")
        sink_tokens = project(visual, self.sink_projector)
        other_tokens = project(visual, self.other_projector)
        weights = self.block_weights(visual, len(sink_tokens))
        tokens, sources = [], []
        for i, (sinks, others) in enumerate(split_sinks(visual, sink_mask, self.order)):
            tokens.append(torch.cat([sink_tokens[i][sinks] * weights[i, 0].to(sink_tokens[i].dtype),
                                     other_tokens[i][others] * weights[i, 1].to(other_tokens[i].dtype)]))
            sources.append(torch.cat([sinks, others]))
        return Routed(tokens, sources, self.position_ids)
