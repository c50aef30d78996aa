"""What every sink detector shares: float32 token norms, ragged rows, the `max_sinks` cap, and the registry.

Detectors read projector-input features only (no model knowledge, docs/contracts.md#the-visual-pathway). Norms
are L2 over the channel dimension, computed in float32 even for bf16/fp16 features (bf16 resolves values near
tau = 100 only to +-0.25). Images may have different sink counts, including none.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

import torch
from torch import nn

from sinkflow.checks import number
from sinkflow.registry import Registry


def token_norms(features: torch.Tensor) -> torch.Tensor:
    """L2 norm of every token in float32: [n_images, N, D] -> [n_images, N]."""
    return torch.linalg.vector_norm(features.float(), dim=-1)


class SinkDetector(nn.Module):
    """Marks high-norm tokens as sinks by one rule (`rule`, per subclass); `max_sinks` then keeps at most that many
    per image, the highest norms first. Subclasses register by name: `class TopK(SinkDetector, name="topk")`."""

    name: ClassVar[str]

    def __init_subclass__(cls, name: str | None = None, **kwargs):
        super().__init_subclass__(**kwargs)
        if name is not None:
            cls.name = name
            DETECTORS.register(name, cls)

    def __init__(self, max_sinks: int | None = None):
        super().__init__()
        self.max_sinks = number("sink_strategy.detector.max_sinks", max_sinks, integer=True, at_least=0, optional=True)

    @abstractmethod
    def rule(self, norms: torch.Tensor) -> torch.Tensor:
        """Sink mask [n_images, N] of unpadded float32 norms [n_images, N], before the `max_sinks` cap."""

    def options(self) -> dict:
        """The detector's settings, as its config states them (calibration reports them)."""
        return {"max_sinks": self.max_sinks}

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
            mask[i, :n] = self.from_norms(norms[i : i + 1, :n])[0]
        return mask

    def from_norms(self, norms: torch.Tensor) -> torch.Tensor:
        """Sink mask from precomputed float32 norms [n_images, N] (every token real)."""
        mask = self.rule(norms)
        return mask if self.max_sinks is None else self._cap(mask, norms)

    def _cap(self, mask: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        """Keep at most `max_sinks` sinks per image, highest norms first (ties to the lower index)."""
        masked = torch.where(mask, norms, torch.full_like(norms, -torch.inf))
        return mask & top_ranks(masked, self.max_sinks)


def top_ranks(norms: torch.Tensor, counts: torch.Tensor | int) -> torch.Tensor:
    """[n_images, N] bool: the `counts` highest norms of each image. The sort is stable and descending, so equal
    norms keep token order and ties go to the lower index."""
    order = torch.sort(norms, dim=1, descending=True, stable=True).indices
    ranks = torch.arange(norms.shape[1], device=norms.device).expand_as(norms)
    counts = counts[:, None] if isinstance(counts, torch.Tensor) else counts
    return torch.zeros_like(norms, dtype=torch.bool).scatter(1, order, ranks < counts)


DETECTORS: Registry[type[SinkDetector]] = Registry("detector", "sinkflow.sinks.detectors")
