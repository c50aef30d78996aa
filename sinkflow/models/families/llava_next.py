"""LLaVA-NeXT family (`llava-hf/llava-v1.6-*`): AnyRes tiles through a CLIP ViT -> MLP projector -> the LLM.

What differs from LLaVA-1.5 (docs/models.md#llava-next):
- An image is a base view (the whole image resized to one ViT tile) plus the tiles of the grid
  (`image_grid_pinpoints`) that best fits it. Each tile runs through the ViT alone, and the projector maps every
  patch on its own (1:1, as LLaVA-1.5).
- The LLM reads the base view's patches, then the high-resolution grid row by row (the tiles stitched, so a row
  crosses tiles), cut to the image's aspect ratio (the padding's patches dropped), with `image_newline` after every
  row. The features are the per-patch projector inputs in that order; `tiles` gives each patch's ViT tile (0: the
  base view), so sinks are detected and counted per tile and routed per image.
- The newlines are fixed tokens of the image's block (`layouts`, `fixed_tokens`): never routed nor counted;
  routed tokens reflow around them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from transformers.models.llava_next.modeling_llava_next import (
    get_anyres_image_grid_shape,
    image_size_to_num_patches,
    unpad_image,
)

from sinkflow.data.templates import ProcessorChatTemplate
from sinkflow.models.families.base import unnormalise
from sinkflow.models.families.llava import LlavaFamily
from sinkflow.pathway import VisualFeatures


@dataclass
class AnyResPlan:
    """Where one image's LLM tokens come from: `index` [n] the row of each visual token among the image's tiles'
    patches (tile-major, raster within a tile), `layout` [block] its placeholder block (False: a newline)."""

    n_tiles: int  # ViT tiles of the image, its base view included
    per_tile: int  # patches of a tile
    index: torch.Tensor
    layout: torch.Tensor


class LlavaNextFamily(LlavaFamily, name="llava_next"):
    """LLaVA-NeXT; `vision_feature_layer` / `vision_feature_select_strategy` as for LLaVA."""

    variant = "llava_next"  # the tiny builder's model

    @classmethod
    def default_template(cls):
        return ProcessorChatTemplate()  # the checkpoints' own, not LLaVA-1.5's Vicuna

    @classmethod
    def build_tiny(cls, seed: int = 0, image_size: int | None = None, **sizes: int):
        from sinkflow.models.tiny_llava_next import TinyAnyResSpec, build_tiny_anyres

        size = {"image_size": image_size, "patch_size": image_size // 8} if image_size else {}
        return build_tiny_anyres(TinyAnyResSpec(variant=cls.variant, seed=seed, **size, **sizes))

    def tiled(self, batch: dict) -> list[bool]:
        """Per image, whether it is cut into tiles (always, for LLaVA-NeXT)."""
        return [True] * len(batch["image_sizes"])

    def check_grid(self, model: nn.Module, image: int, size: list[int], grid: torch.Tensor) -> None:
        """Refuse a high-resolution grid [rows, cols] whose LLM tokens would not be its patches (LLaVA-NeXT keeps
        every patch)."""

    def plan(self, model: nn.Module, image: int, size: list[int], tiled: bool) -> AnyResPlan:
        """The token plan of an image of `size` (height, width), as transformers' `pack_image_features` packs it."""
        vision = model.config.vision_config
        side = vision.image_size // vision.patch_size
        per_tile = side * side
        base = torch.arange(per_tile)
        if not tiled:  # the base view alone, then one newline
            newline = torch.cat([torch.ones(per_tile, dtype=torch.bool), torch.zeros(1, dtype=torch.bool)])
            return AnyResPlan(1, per_tile, base, newline)
        pinpoints = model.config.image_grid_pinpoints
        rows, cols = get_anyres_image_grid_shape(size, pinpoints, vision.image_size)
        # Each grid cell's patch row: tiles in raster order after the base view, raster within each tile.
        grid = per_tile + torch.arange(rows * cols * per_tile).view(rows, cols, side, side)
        grid = unpad_image(grid.permute(0, 2, 1, 3).reshape(1, rows * side, cols * side), size)[0]
        self.check_grid(model, image, size, grid)
        height, width = grid.shape
        row = torch.cat([torch.ones(width, dtype=torch.bool), torch.zeros(1, dtype=torch.bool)])
        layout = torch.cat([torch.ones(per_tile, dtype=torch.bool), row.repeat(height)])
        n_tiles = image_size_to_num_patches(size, pinpoints, vision.image_size)
        return AnyResPlan(n_tiles, per_tile, torch.cat([base, grid.flatten()]), layout)

    def encode(self, model: nn.Module, batch: dict) -> VisualFeatures:
        sizes = batch["image_sizes"].tolist()
        plans = [self.plan(model, i, size, tiled) for i, (size, tiled) in enumerate(zip(sizes, self.tiled(batch)))]
        pixels = torch.cat([image[: plan.n_tiles] for image, plan in zip(batch["pixel_values"], plans)])
        per_tile = super().encode(model, {"pixel_values": pixels}).features  # [tiles, patches, D]
        n_patches = per_tile.shape[1]
        if n_patches != plans[0].per_tile:
            raise ValueError(
                f"a ViT tile gives {n_patches} features for {plans[0].per_tile} patches: the grid packs patches only "
                "(a CLS token kept? use model.family.vision_feature_select_strategy=default with CLIP)"
            )
        rows = per_tile.flatten(0, 1).split([plan.n_tiles * n_patches for plan in plans])
        device = per_tile.device
        index = [plan.index.to(device) for plan in plans]
        features = [image_rows[i] for image_rows, i in zip(rows, index)]
        return VisualFeatures(
            features=pad_sequence(features, batch_first=True),
            lengths=[len(i) for i in index],
            tiles=[i // n_patches for i in index],
            layouts=[plan.layout.to(device) for plan in plans],
            extras={"patch_rows": index, "tile_patches": n_patches},
        )

    def project(
        self, model: nn.Module, visual: VisualFeatures, projector: nn.Module | None = None
    ) -> list[torch.Tensor]:
        return list((projector or self.projector(model))(visual.features[visual.valid()]).split(visual.slots))

    def select_extras(self, visual: VisualFeatures, images: list[int]) -> dict[str, object]:
        """Each image's patch rows (its features' places among its tiles' patches); the patches per tile."""
        return {**visual.extras, "patch_rows": [visual.extras["patch_rows"][i] for i in images]}

    def fixed_tokens(self, model: nn.Module, visual: VisualFeatures) -> list[torch.Tensor]:
        """`image_newline` at the end of every row of the high-resolution grid."""
        newline = model.model.image_newline
        return [newline.expand(int((~layout).sum()), -1) for layout in visual.layouts]

    def patch_pixels(self, batch: dict, visual: VisualFeatures) -> torch.Tensor:
        """Each feature's pixel patch (3 x p x p values), picked from its tile's raster patches as the features are."""
        pixels = batch["pixel_values"]
        n_images, n_tiles, channels, _, tile = pixels.shape
        side = math.isqrt(visual.extras["tile_patches"])
        patch = tile // side
        patches = pixels.reshape(n_images, n_tiles, channels, side, patch, side, patch)
        patches = patches.permute(0, 1, 3, 5, 2, 4, 6).reshape(n_images, n_tiles * side * side, -1)
        rows = visual.extras["patch_rows"]
        return pad_sequence([patches[i, index.to(pixels.device)] for i, index in enumerate(rows)], batch_first=True)

    def seen_images(self, batch: dict, processor) -> list[torch.Tensor]:
        """The high-resolution grid's tiles stitched and cut to the image's aspect ratio (the base view alone for an
        image that is not tiled)."""
        pinpoints = processor.image_processor.image_grid_pinpoints
        images = []
        for image, size, tiled in zip(batch["pixel_values"], batch["image_sizes"].tolist(), self.tiled(batch)):
            if not tiled:
                images.append(image[0])
                continue
            tile = image.shape[-1]
            rows, cols = get_anyres_image_grid_shape(size, pinpoints, tile)
            grid = image[1 : 1 + rows * cols].view(rows, cols, 3, tile, tile).permute(2, 0, 3, 1, 4)
            images.append(unpad_image(grid.reshape(3, rows * tile, cols * tile), size))
        return unnormalise(images, processor.image_processor)

    def feature_positions(self, model, batch, visual, chunks):
        """Every tile is one ViT sequence ([CLS,] patches in raster order), all images' tiles in order; a feature is
        the tile patch its `patch_rows` entry names."""
        n_patches = visual.extras["tile_patches"]
        leading = chunks[0] - n_patches  # CLIP's CLS before the patches
        starts = torch.tensor([0, *chunks[:-1]]).cumsum(0)
        sizes, tiled = batch["image_sizes"].tolist(), self.tiled(batch)
        positions, before = [], 0
        for i, rows in enumerate(visual.extras["patch_rows"]):
            rows = rows.cpu()
            positions.append(starts[before + rows // n_patches] + leading + rows % n_patches)
            before += self.plan(model, i, sizes[i], tiled[i]).n_tiles
        return positions

    def attention_positions(self, model, batch, visual, chunks):
        raise NotImplementedError(
            f"{type(self).__name__}: an AnyRes image is several ViT sequences (its base view and each tile), which "
            "one patch grid per image cannot show: relevance maps are not provided for this family"
        )
