"""`sinks_only`: how much of an answer the few sink tokens carry on their own (an ablation of
docs/paper.md#training-free-routing; `random_control` with `action: keep` is its control)."""

from __future__ import annotations

import torch

from sinkflow.pathway import VisualFeatures
from sinkflow.sinks.strategies.base import OrderedSinks, split_sinks


class SinksOnly(OrderedSinks, name="sinks_only"):
    """Only the sinks reach the LLM (an image without sinks sends no visual token)."""

    def select(self, visual: VisualFeatures, sink_mask: torch.Tensor | None) -> list[torch.Tensor]:
        return [sinks for sinks, others in split_sinks(visual, sink_mask, self.order)]
