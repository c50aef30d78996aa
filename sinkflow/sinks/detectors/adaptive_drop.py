"""`adaptive_drop`: sinks found without a threshold, for ViTs whose norm scale is unknown."""

from __future__ import annotations

import torch

from sinkflow.checks import number
from sinkflow.sinks.detectors.base import SinkDetector, top_ranks


class AdaptiveDrop(SinkDetector, name="adaptive_drop"):
    """Sort each image's norms in descending order and cut at the largest ratio between consecutive norms: the
    tokens above the cut are sinks if that ratio is at least `min_ratio`, else there are none."""

    def __init__(self, min_ratio: float = 2.0, max_sinks: int | None = None):
        super().__init__(max_sinks)
        self.min_ratio = number("sink_strategy.detector.min_ratio", min_ratio, above=1)

    def rule(self, norms: torch.Tensor) -> torch.Tensor:
        if norms.shape[1] < 2:
            return torch.zeros_like(norms, dtype=torch.bool)
        ranked = torch.sort(norms, dim=1, descending=True, stable=True).values
        ratios = ranked[:, :-1] / ranked[:, 1:].clamp_min(torch.finfo(ranked.dtype).tiny)
        best, cut = ratios.max(dim=1)
        return top_ranks(norms, torch.where(best >= self.min_ratio, cut + 1, torch.zeros_like(cut)))

    def options(self) -> dict:
        return {"min_ratio": self.min_ratio, **super().options()}
