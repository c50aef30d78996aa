"""SIMULATED sinks for the tiny model (DESIGN.md §4) — a documented stand-in, never used with real checkpoints.

Sinks emerge only in large, long-trained ViTs; a randomly initialised tiny ViT has none. This module plants them
where the paper finds them: it writes a global summary of each image (the mean of its patch features, rescaled
to norm `norm` >= tau) into the `k` patches of lowest pixel variance (flat background; ties go to the lower
patch index). The planted positions are the ground truth that detector precision / recall are scored against.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)


class SimulatedSinks(nn.Module):
    """Plants `k` high-norm global-summary tokens per image into the projector-input features."""

    def __init__(self, k: int = 2, norm: float = 150.0):
        super().__init__()
        if k < 1:
            raise ValueError(f"model.simulated_sinks.k must be >= 1, got {k}")
        if norm <= 0:
            raise ValueError(f"model.simulated_sinks.norm must be > 0, got {norm}")
        self.k, self.norm = k, norm
        log.warning("SIMULATION: planting %d simulated sink tokens of norm %.0f per image (model.simulated_sinks); "
                    "set it to null for a real checkpoint", k, norm)

    def positions(self, pixel_values: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """[n_images, k] patch indices of lowest pixel variance (raster order, ties to the lower index)."""
        rows, cols = grid
        n, channels, height, width = pixel_values.shape
        if height % rows or width % cols:
            raise ValueError(f"images of {height}x{width} px do not split into a {rows}x{cols} patch grid")
        patches = pixel_values.float().reshape(n, channels, rows, height // rows, cols, width // cols)
        variance = patches.permute(0, 2, 4, 1, 3, 5).reshape(n, rows * cols, -1).var(dim=-1)
        order = torch.sort(variance, dim=1, stable=True).indices[:, : self.k]
        return order.sort(dim=1).values

    def forward(self, features: torch.Tensor, pixel_values: torch.Tensor, grid: tuple[int, int]):
        """(features with the sinks planted, planted mask [n_images, N] bool)."""
        n_images, n_tokens, _ = features.shape
        if n_tokens != grid[0] * grid[1]:
            raise ValueError(f"simulated sinks need one feature per patch ({grid[0] * grid[1]}), got {n_tokens}; "
                             "use vision_feature_select_strategy 'default'")
        if self.k > n_tokens:
            raise ValueError(f"model.simulated_sinks.k={self.k} exceeds the {n_tokens} patches per image")
        summary = features.mean(dim=1, keepdim=True)
        summary = summary * (self.norm / torch.linalg.vector_norm(summary.float(), dim=-1, keepdim=True)
                             .clamp_min(1e-6)).to(summary.dtype)
        planted = torch.zeros(n_images, n_tokens, dtype=torch.bool, device=features.device)
        planted.scatter_(1, self.positions(pixel_values, grid).to(features.device), True)
        return torch.where(planted.unsqueeze(-1), summary, features), planted
