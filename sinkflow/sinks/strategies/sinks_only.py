"""`sinks_only`: only the sinks reach the LLM (an image without sinks sends no visual token)
(docs/paper.md#training-free-routing)."""

from __future__ import annotations

import torch

from sinkflow.sinks.strategies.base import OrderedSinks, split_sinks
from sinkflow.pathway import VisualFeatures


class SinksOnly(OrderedSinks, name="sinks_only"):
    """Only the sinks reach the LLM (an image without sinks sends no visual token)."""

    def select(self, visual: VisualFeatures, sink_mask: torch.Tensor | None) -> list[torch.Tensor]:
        return [sinks for sinks, others in split_sinks(visual, sink_mask, self.order)]
