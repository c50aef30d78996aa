"""Qwen2.5-VL family (`Qwen/Qwen2.5-VL-*`): Qwen2-VL's pathway with a windowed-attention ViT.

The ViT runs on patches permuted into attention windows (whole 2x2 merge windows move together) and un-permutes
only the merged tokens; the per-patch states before the merger are therefore put back in the processor's order
here, so that features, sinks and merged tokens line up as for Qwen2-VL.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.vision_utils import get_vision_window_index

from sinkflow.models.families.qwen2_vl import Qwen2VLFamily


class Qwen25VLFamily(Qwen2VLFamily, name="qwen2_5_vl"):
    """Qwen2.5-VL; everything else as Qwen2-VL."""

    variant = "qwen2_5_vl"

    def merge_window_order(self, model: nn.Module, hidden: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        tower = self.vision_tower(model)
        window_index, _ = get_vision_window_index(
            grid,
            spatial_merge_size=tower.spatial_merge_size,
            window_size=tower.window_size,
            patch_size=tower.patch_size,
        )
        group = tower.spatial_merge_size**2
        windows = hidden.view(-1, group, hidden.shape[-1])
        return windows[torch.argsort(window_index.to(hidden.device))].reshape(-1, hidden.shape[-1])
