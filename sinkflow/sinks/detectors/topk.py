"""`topk`: a fixed number of sinks per image, whatever the norms."""

from __future__ import annotations

import torch

from sinkflow.checks import number
from sinkflow.sinks.detectors.base import SinkDetector, top_ranks


class TopK(SinkDetector, name="topk"):
    """Sinks: the `k` highest norms of each image (ties go to the lower token index)."""

    def __init__(self, k: int = 4, max_sinks: int | None = None):
        super().__init__(max_sinks)
        self.k = number("sink_strategy.detector.k", k, integer=True, at_least=1)  # k = 0 would find no sink

    def rule(self, norms: torch.Tensor) -> torch.Tensor:
        return top_ranks(norms, min(self.k, norms.shape[1]))

    def options(self) -> dict:
        return {"k": self.k, **super().options()}
