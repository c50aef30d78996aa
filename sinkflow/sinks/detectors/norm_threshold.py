"""`norm_threshold`: the paper's rule (docs/paper.md#vit-sinks-and-tau)."""

from __future__ import annotations

import torch

from sinkflow.checks import number
from sinkflow.sinks.detectors.base import SinkDetector


class NormThreshold(SinkDetector, name="norm_threshold"):
    """Sinks: tokens whose norm is at least `tau` (100 for CLIP ViT-L/14-336)."""

    def __init__(self, tau: float = 100.0, max_sinks: int | None = None):
        super().__init__(max_sinks)
        self.tau = number("sink_strategy.detector.tau", tau, above=0)  # tau <= 0 would mark every token

    def rule(self, norms: torch.Tensor) -> torch.Tensor:
        return norms >= self.tau

    def options(self) -> dict:
        return {"tau": self.tau, **super().options()}
