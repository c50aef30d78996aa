"""`drop_sinks`: the sinks never reach the LLM; the other patches keep raster order (an ablation of
docs/paper.md#training-free-routing)."""

from __future__ import annotations

import torch

from sinkflow.pathway import VisualFeatures
from sinkflow.sinks.strategies.base import SinkStrategy, split_sinks


class DropSinks(SinkStrategy, name="drop_sinks"):
    """Every non-sink patch, in raster order."""

    def select(self, visual: VisualFeatures, sink_mask: torch.Tensor | None) -> list[torch.Tensor]:
        return [others for _, others in split_sinks(visual, sink_mask)]
