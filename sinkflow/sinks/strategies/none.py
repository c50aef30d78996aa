"""`none`: the vanilla pathway, every token in raster order through the family's projector."""

from __future__ import annotations

import torch

from sinkflow.pathway import VisualFeatures
from sinkflow.sinks.strategies.base import SinkStrategy


class NoneStrategy(SinkStrategy, name="none"):
    """Identity routing; sinkflow with this strategy reproduces plain transformers exactly."""

    needs_sinks = False

    def select(self, visual: VisualFeatures, sink_mask: torch.Tensor | None) -> list[torch.Tensor]:
        return [torch.arange(n, device=visual.features.device) for n in visual.slots]
