"""Idefics3 family (`HuggingFaceM4/Idefics3-8B-Llama3`, transformers' `Idefics3ForConditionalGeneration`): SigLIP on
image crops plus a global view -> pixel shuffle (scale x scale patches folded into channels) -> Linear -> Llama 3.

What differs from LLaVA (docs/models.md#idefics3-and-smolvlm):
- Image splitting: the processor resizes an image, cuts it into rows x cols crops and adds the whole image as a
  global view; each crop is its own ViT sequence (`pixel_attention_mask` marks padding pixels). Features are the
  ViT's per-patch states (after its final norm) before the pixel shuffle, every crop's patches in window order
  (`sinkflow.models.pixel_shuffle`), all of an image's crops in one row: sinks are detected and counted per crop.
- Relevance maps are drawn on an image's crops side by side (its global view has no cell on that grid).
- The prompt names every crop in text: `<fake_token_around_image><row_1_col_1><image>...<image>` per crop, then
  `<fake_token_around_image><global-img><image>...<image><fake_token_around_image>`. The tags are text, not visual
  tokens, so an image's placeholders are one run per crop (`VisualFeatures.runs`): the image is routed as a whole
  (one decision, one order) and every crop's run receives its own tokens in that order (sink_front puts each crop's
  sinks first under its tag; drop_sinks shortens each crop's run by its sinks). Moving tokens across the text
  would leave the tags naming crops whose tokens they no longer introduce.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import nn

from sinkflow.models import pixel_shuffle
from sinkflow.models.families.base import VisualFamily, unnormalise
from sinkflow.models.tiled_processors import load_idefics3_processor
from sinkflow.pathway import VisualFeatures


class Idefics3Family(VisualFamily, name="idefics3"):
    """Idefics3; SmolVLM (`smolvlm.py`) is the same architecture. `sink_tokens` says how patch sinks map to folded
    tokens (see `VisualFamily`)."""

    variant = "idefics3"  # the tiny builder's model class

    @classmethod
    def build_tiny(cls, seed: int = 0, image_size: int | None = None, **sizes: int):
        from sinkflow.models.tiny_idefics3 import TinyIdefics3Spec, build_tiny_idefics3

        # `image_size`: the images' side, which the processor cuts into 2 x 2 crops and the global view.
        crops = {"longest_edge": image_size, "crop": image_size // 2} if image_size else {}
        return build_tiny_idefics3(TinyIdefics3Spec(variant=cls.variant, seed=seed, **crops, **sizes))

    def load_processor(self, source: str, trust_remote_code: bool = False):
        return load_idefics3_processor(source, trust_remote_code)

    def vision_tower(self, model: nn.Module) -> nn.Module:
        return model.model.vision_model

    def projector(self, model: nn.Module) -> nn.Module:
        """The connector's projection (the pixel shuffle before it has no weights)."""
        return model.model.connector.modality_projection

    def language_model_prefix(self) -> str:
        return r"model\.text_model\."

    def image_token_id(self, model: nn.Module) -> int:
        return model.config.image_token_id

    def encode(self, model: nn.Module, batch: dict) -> VisualFeatures:
        tower = self.vision_tower(model)
        pixels, pixel_mask, crops = split_crops(batch)
        if pixel_mask is None:
            pixel_mask = torch.ones((len(pixels), *pixels.shape[2:]), dtype=torch.bool, device=pixels.device)
        patch = tower.config.patch_size
        # A patch takes part in attention if any of its pixels is real (transformers' rule).
        patch_mask = pixel_mask.unfold(1, patch, patch).unfold(2, patch, patch).sum(dim=(-1, -2)) > 0
        states = tower(pixel_values=pixels.to(tower.dtype), patch_attention_mask=patch_mask).last_hidden_state
        visual = pixel_shuffle.tile_features(states, crops, model.config.scale_factor)
        per_crop = states.shape[1] // visual.group
        return replace(visual, runs=[[per_crop] * n for n in crops])

    def project(
        self, model: nn.Module, visual: VisualFeatures, projector: nn.Module | None = None
    ) -> list[torch.Tensor]:
        return pixel_shuffle.project(projector or self.projector(model), visual)

    def patch_pixels(self, batch: dict, visual: VisualFeatures) -> torch.Tensor:
        pixels, _, crops = split_crops(batch)
        return pixel_shuffle.tile_patches(pixels, visual, crops)

    def vision_attentions(self, model: nn.Module) -> list[nn.Module]:
        return [layer.self_attn for layer in self.vision_tower(model).encoder.layers]

    def feature_block(self, model: nn.Module) -> int:
        return len(self.vision_attentions(model)) - 1  # the last block, then the tower's final norm

    def attention_positions(
        self, model: nn.Module, batch: dict, visual: VisualFeatures, chunks: list[int]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Every crop is one sequence of its patches in raster order. An image's grid is its crops side by side as the
        processor cut them (its global view, attended alone, has no cell), or its one crop when it was left whole."""
        grids = crop_grids(batch)
        counts = crop_counts(grids)
        if len(chunks) != sum(counts) or len(set(chunks)) != 1:
            raise ValueError(f"the ViT ran {len(chunks)} sequences of {set(chunks)} patches for {sum(counts)} crops")
        side, device = math.isqrt(chunks[0]), visual.features.device
        starts = torch.arange(sum(counts), device=device) * chunks[0]
        order = pixel_shuffle.window_order(side, math.isqrt(visual.group), device)
        features, cells, first = [], [], 0
        for (rows, cols), n in zip(grids, counts):
            crops = starts[first : first + n]
            features.append((crops[:, None] + order).flatten())
            rows, cols = max(rows, 1), max(cols, 1)
            y, x = torch.arange(rows * side, device=device)[:, None], torch.arange(cols * side, device=device)
            cells.append(crops[(y // side) * cols + x // side] + (y % side) * side + x % side)
            first += n
        return features, cells

    def seen_images(self, batch: dict, processor) -> list[torch.Tensor]:
        """Each image's crops put back side by side (the global view left out), or its one crop."""
        pixels, _, counts = split_crops(batch)
        images, first = [], 0
        for (rows, cols), n in zip(crop_grids(batch), counts):
            rows, cols = max(rows, 1), max(cols, 1)
            crops = pixels[first : first + rows * cols].float().cpu()
            _, channels, height, width = crops.shape
            grid = crops.view(rows, cols, channels, height, width).permute(2, 0, 3, 1, 4)
            images.append(grid.reshape(channels, rows * height, cols * width))
            first += n
        return unnormalise(images, processor.image_processor)


def split_crops(batch: dict) -> tuple[torch.Tensor, torch.Tensor | None, list[int]]:
    """The batch's real crops [n_crops, 3, H, W] in order, their pixel masks [n_crops, H, W] (None without), and each
    image's crop count: rows x cols + the global view, or 1 for an image left whole.

    The processor stacks crops per prompt and pads with all-zero crops; like transformers, any crop that is not all
    zero is real, whatever the grouping (sinkflow's collator stacks all the batch's crops in one row).
    """
    pixels = batch["pixel_values"].flatten(0, 1)
    real = pixels.flatten(1).ne(0).any(dim=1)
    mask = batch.get("pixel_attention_mask")
    mask = mask.flatten(0, 1)[real].bool() if mask is not None else None
    crops = crop_counts(crop_grids(batch))
    if sum(crops) != int(real.sum()):
        raise ValueError(f"{int(real.sum())} crops in pixel_values for images of {crops} crops (rows / cols)")
    return pixels[real], mask, crops


def crop_grids(batch: dict) -> list[tuple[int, int]]:
    """Each image's crop grid (rows, cols) as the processor cut it; (0, 0) for an image left whole."""
    if "rows" not in batch or "cols" not in batch:
        raise ValueError(
            "the batch has no `rows` / `cols` per image: the image processor must return them (return_row_col_info)"
        )
    return list(zip(_flat(batch["rows"]), _flat(batch["cols"])))


def crop_counts(grids: list[tuple[int, int]]) -> list[int]:
    """Each image's crops: rows x cols and the global view, or 1 for an image left whole."""
    return [rows * cols + 1 if rows or cols else 1 for rows, cols in grids]


def _flat(values) -> list[int]:
    """Per-image counts from the processor's per-prompt lists (or a tensor of them)."""
    values = values.tolist() if torch.is_tensor(values) else values
    return [int(v) for row in values for v in (row if isinstance(row, list | tuple) else [row])]
