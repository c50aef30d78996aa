"""Pixel-shuffle connectors (InternVL, Idefics3 / SmolVLM): every ViT tile's square patch grid folded into
scale x scale windows, one LLM token per window, an image being several tiles (crops and a global view).

transformers' pixel shuffle concatenates the patches of a window, row by row, into one vector. sinkflow orders each
tile's patches window by window (windows in raster order, each window row by row: Qwen's merge-window order), so a
group of scale² consecutive patches is one folded token and `VisualFeatures.token_features()` is exactly the
pixel-shuffled projector input. All of an image's tiles go into its one feature row, in the processor's tile order,
with `tiles` naming the tile of each patch.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from sinkflow.models.families.qwen2_vl import merge_window_cells
from sinkflow.pathway import VisualFeatures


def window_order(side: int, scale: int, device: torch.device | None = None) -> torch.Tensor:
    """[side²]: the raster index of the patch at each position of the window order."""
    if side % scale:
        raise ValueError(f"a {side}x{side} patch grid does not fold into {scale}x{scale} windows")
    return merge_window_cells(side, side, scale).flatten().argsort().to(device)


def tile_features(states: torch.Tensor, tiles_per_image: list[int], scale: int) -> VisualFeatures:
    """Per-tile raster patch states [n_tiles, side², D] -> one window-ordered row per image (its tiles in order)."""
    n_tiles, n_patches, _ = states.shape
    if n_tiles != sum(tiles_per_image):
        raise ValueError(f"{n_tiles} ViT tiles for images of {tiles_per_image} tiles")
    side = math.isqrt(n_patches)
    if side * side != n_patches:
        raise ValueError(f"{n_patches} patches per tile do not form a square grid")
    windowed = states[:, window_order(side, scale, states.device)]
    rows = [tiles.flatten(0, 1) for tiles in windowed.split(tiles_per_image)]
    tiles = [torch.arange(n, device=states.device).repeat_interleave(n_patches) for n in tiles_per_image]
    return VisualFeatures(
        features=pad_sequence(rows, batch_first=True),
        lengths=[len(row) for row in rows],
        group=scale * scale,
        tiles=tiles,
    )


def project(projector: nn.Module, visual: VisualFeatures) -> list[torch.Tensor]:
    """Every image's LLM tokens [slots_i, D_llm]: each window's patches side by side (the pixel shuffle) through
    `projector`."""
    valid = visual.to_tokens(visual.valid())
    return list(projector(visual.token_features()[valid]).split(visual.slots))


def tile_patches(pixels: torch.Tensor, visual: VisualFeatures, tiles_per_image: list[int]) -> torch.Tensor:
    """[n_images, N, 3 * patch²]: the pixels under each patch of the tiles `pixels` [n_tiles, 3, H, H], ordered and
    grouped per image as `tile_features` orders `visual`'s features."""
    n_tiles, channels, height, _ = pixels.shape
    side = math.isqrt(int((visual.tiles[0] == 0).sum()))  # patches per tile side
    patch = height // side
    grid = pixels.reshape(n_tiles, channels, side, patch, side, patch)
    raster = grid.permute(0, 2, 4, 1, 3, 5).reshape(n_tiles, side * side, -1)
    windowed = raster[:, window_order(side, math.isqrt(visual.group), pixels.device)]
    return pad_sequence([tiles.flatten(0, 1) for tiles in windowed.split(tiles_per_image)], batch_first=True)
