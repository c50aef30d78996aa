"""`sink_front`: the paper's training-free routing (docs/paper.md#training-free-routing), which puts the tokens
carrying global semantics where the LLM's early attention looks first."""

from __future__ import annotations

import torch

from sinkflow.pathway import VisualFeatures
from sinkflow.sinks.strategies.base import OrderedSinks, split_sinks


class SinkFront(OrderedSinks, name="sink_front"):
    """Sinks first in the visual block, then the other patches in raster order."""

    def select(self, visual: VisualFeatures, sink_mask: torch.Tensor | None) -> list[torch.Tensor]:
        return [torch.cat([sinks, others]) for sinks, others in split_sinks(visual, sink_mask, self.order)]
