"""SIMULATED sinks for the tiny model (docs/contracts.md#simulated-sinks) — a documented stand-in, never used with
real checkpoints.

Sinks emerge only in large, long-trained ViTs; a randomly initialised tiny ViT has none. This module plants them
where the paper finds them: it writes a global summary of each image (the mean of its patch features, rescaled
to norm `norm` >= tau) into the `k` patches of lowest pixel variance (flat background; ties go to the lower
patch index). The planted positions are the ground truth that detector precision / recall are scored against.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from sinkflow.checks import number

log = logging.getLogger(__name__)


class SimulatedSinks(nn.Module):
    """Plants `k` high-norm global-summary tokens per image into the projector-input features."""

    def __init__(self, k: int = 2, norm: float = 150.0):
        super().__init__()
        number("model.simulated_sinks.k", k, integer=True, at_least=1)
        number("model.simulated_sinks.norm", norm, above=0)
        self.k, self.norm = k, norm
        log.warning(
            "SIMULATION: planting %d simulated sink tokens of norm %.0f per image (model.simulated_sinks); "
            "set it to null for a real checkpoint",
            k,
            norm,
        )

    def positions(self, patch_pixels: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """[n_images, k] patch indices of lowest pixel variance (ascending index, ties to the lower index)."""
        variance = patch_pixels.float().var(dim=-1)
        padding = (
            torch.arange(variance.shape[1], device=variance.device)
            >= torch.tensor(lengths, device=variance.device)[:, None]
        )
        variance = variance.masked_fill(padding, torch.inf)
        return torch.sort(variance, dim=1, stable=True).indices[:, : self.k].sort(dim=1).values

    def forward(self, visual, patch_pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features with the sinks planted, planted patch mask [n_images, N] bool) for `VisualFeatures`."""
        features, lengths = visual.features, visual.lengths
        if patch_pixels.shape[:2] != features.shape[:2]:
            raise ValueError(
                f"simulated sinks need the pixels of every patch: {tuple(patch_pixels.shape[:2])} "
                f"patches of pixels for {tuple(features.shape[:2])} features"
            )
        if self.k > min(lengths):
            raise ValueError(f"model.simulated_sinks.k={self.k} exceeds the {min(lengths)} patches of an image")
        valid = visual.valid().unsqueeze(-1)
        summary = (features * valid).sum(dim=1, keepdim=True) / valid.sum(dim=1, keepdim=True)
        summary = summary * (
            self.norm / torch.linalg.vector_norm(summary.float(), dim=-1, keepdim=True).clamp_min(1e-6)
        ).to(summary.dtype)
        planted = torch.zeros(features.shape[:2], dtype=torch.bool, device=features.device)
        planted.scatter_(1, self.positions(patch_pixels, lengths).to(features.device), True)
        return torch.where(planted.unsqueeze(-1), summary, features), planted
