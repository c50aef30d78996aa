"""ViT sink detection on projector-input features: pure tensor code, no model knowledge
(docs/contracts.md#the-visual-pathway).

Norms are L2 over the channel dimension, computed in float32 even for bf16/fp16 features (bf16 resolves values
near tau = 100 only to +-0.25). Every mode returns a boolean mask [n_images, N]; images may have
different sink counts, including none.
"""

from __future__ import annotations

import torch
from torch import nn

from sinkflow.checks import number

MODES = ("norm_threshold", "topk", "adaptive_drop")


def token_norms(features: torch.Tensor) -> torch.Tensor:
    """L2 norm of every token in float32: [n_images, N, D] -> [n_images, N]."""
    return torch.linalg.vector_norm(features.float(), dim=-1)


class SinkDetector(nn.Module):
    """Marks high-norm tokens as sinks.

    - `norm_threshold`: norm >= `tau` (the paper's rule; tau = 100 for CLIP ViT-L/14-336).
    - `topk`: the `k` highest norms of each image (ties go to the lower token index).
    - `adaptive_drop`: sort each image's norms in descending order and cut at the largest ratio between
      consecutive norms; the tokens above the cut are sinks if that ratio is at least `min_ratio`, else none.
    `max_sinks` then keeps at most that many per image, the highest norms first.
    """

    def __init__(self, mode: str = "norm_threshold", tau: float = 100.0, k: int = 4, min_ratio: float = 2.0,
                 max_sinks: int | None = None):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"sink_strategy.detector.mode must be one of {MODES}, got {mode!r}")
        # Every option, whatever the mode: a bad value is a mistake even where this mode ignores it.
        number("sink_strategy.detector.tau", tau, above=0)
        number("sink_strategy.detector.k", k, integer=True, at_least=1)  # k = 0 would silently find no sink
        number("sink_strategy.detector.min_ratio", min_ratio, above=1)
        number("sink_strategy.detector.max_sinks", max_sinks, integer=True, at_least=0, optional=True)
        self.mode, self.tau, self.k, self.min_ratio, self.max_sinks = mode, tau, k, min_ratio, max_sinks

    def forward(self, features: torch.Tensor, lengths: list[int] | None = None) -> torch.Tensor:
        """Sink mask [n_images, N] for features [n_images, N, D]; with `lengths`, rows are padded after them."""
        return self.mask(token_norms(features), lengths)

    def mask(self, norms: torch.Tensor, lengths: list[int] | None = None) -> torch.Tensor:
        """Sink mask from norms [n_images, N] whose rows may be padded after `lengths` (padding is never a sink)."""
        if lengths is None or min(lengths) == norms.shape[1]:
            return self.from_norms(norms)
        # Ragged images: each row on its own (a padded zero norm would count in top-k and drop ratios).
        mask = torch.zeros_like(norms, dtype=torch.bool)
        for i, n in enumerate(lengths):
            mask[i, :n] = self.from_norms(norms[i:i + 1, :n])[0]
        return mask

    def from_norms(self, norms: torch.Tensor) -> torch.Tensor:
        """Sink mask from precomputed float32 norms [n_images, N]."""
        if self.mode == "norm_threshold":
            mask = norms >= self.tau
        else:
            # A stable descending sort: equal norms keep token order, so ties go to the lower index.
            order = torch.sort(norms, dim=1, descending=True, stable=True).indices
            counts = self._counts(torch.gather(norms, 1, order))
            ranks = torch.arange(norms.shape[1], device=norms.device).expand_as(norms)
            mask = torch.zeros_like(norms, dtype=torch.bool).scatter(1, order, ranks < counts[:, None])
        if self.max_sinks is not None:
            mask = self._cap(mask, norms)
        return mask

    def _counts(self, ranked: torch.Tensor) -> torch.Tensor:
        """How many of the descending-sorted norms of each image are sinks."""
        n_images, n_tokens = ranked.shape
        if self.mode == "topk":
            return torch.full((n_images,), min(self.k, n_tokens), device=ranked.device)
        if n_tokens < 2:
            return torch.zeros(n_images, dtype=torch.long, device=ranked.device)
        ratios = ranked[:, :-1] / ranked[:, 1:].clamp_min(torch.finfo(ranked.dtype).tiny)
        best, cut = ratios.max(dim=1)
        return torch.where(best >= self.min_ratio, cut + 1, torch.zeros_like(cut))

    def _cap(self, mask: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        """Keep at most `max_sinks` sinks per image, highest norms first (ties to the lower index)."""
        masked = torch.where(mask, norms, torch.full_like(norms, -torch.inf))
        order = torch.sort(masked, dim=1, descending=True, stable=True).indices
        ranks = torch.arange(norms.shape[1], device=norms.device).expand_as(norms)
        keep = torch.zeros_like(mask).scatter(1, order, ranks < self.max_sinks)
        return mask & keep
