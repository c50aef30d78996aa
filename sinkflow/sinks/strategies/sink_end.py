"""`sink_end`: the mirror image of `sink_front` (docs/paper.md#training-free-routing), which tells the effect of
where the sinks sit from the effect of their being there."""

from __future__ import annotations

import torch

from sinkflow.pathway import VisualFeatures
from sinkflow.sinks.strategies.base import OrderedSinks, split_sinks


class SinkEnd(OrderedSinks, name="sink_end"):
    """The other patches in raster order, then the sinks last in the visual block."""

    def select(self, visual: VisualFeatures, sink_mask: torch.Tensor | None) -> list[torch.Tensor]:
        return [torch.cat([others, sinks]) for sinks, others in split_sinks(visual, sink_mask, self.order)]
