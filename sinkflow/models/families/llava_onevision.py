"""LLaVA-OneVision family (`llava-hf/llava-onevision-qwen2-*-ov-hf`): LLaVA-NeXT's AnyRes pathway on a SigLIP ViT
and a Qwen2 LLM, with up to 6 x 6 tiles.

What differs from LLaVA-NeXT (docs/models.md#llava-onevision):
- `vision_aspect_ratio` (`anyres_max_9`): a high-resolution grid with more unpadded patches than that many tiles'
  (x 1.1^2) is interpolated down (bilinear) after the projector, so its LLM tokens mix several patches and are no
  longer patches. sinkflow routes patches, so it refuses such an image with an error that names the smallest
  `model.family.vision_aspect_ratio` keeping its every patch (more LLM tokens than the checkpoint's setting, which
  the processor then counts too).
- An image of a sample with several images (`batch_num_images`) is not tiled: its base view, then one newline.
- The HF processor builds a video processor (torchvision): `OnevisionProcessor` stands in for it.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from sinkflow.models.families.llava import FeatureSelect
from sinkflow.models.families.llava_next import LlavaNextFamily
from sinkflow.models.onevision_processor import OnevisionProcessor

# Beyond 1.1 times the allowed side, transformers interpolates (LlavaOnevisionModel.pack_image_features).
INTERPOLATION_RATIO = 1.1


class LlavaOnevisionFamily(LlavaNextFamily, name="llava_onevision"):
    """LLaVA-OneVision; `vision_aspect_ratio` (`anyres_max_<tiles>`) overrides the checkpoint's, in the processor's
    placeholder counts and in the packing alike."""

    variant = "llava_onevision"

    def __init__(
        self,
        vision_feature_layer: int | None = None,
        vision_feature_select_strategy: FeatureSelect | None = None,
        vision_aspect_ratio: str | None = None,
    ):
        super().__init__(vision_feature_layer, vision_feature_select_strategy)
        if vision_aspect_ratio is not None and not re.fullmatch(r"anyres_max_[1-9]\d*", str(vision_aspect_ratio)):
            raise ValueError(
                "`model.family.vision_aspect_ratio` must be anyres_max_<tiles> (e.g. anyres_max_9), "
                f"got {vision_aspect_ratio!r}"
            )
        self.vision_aspect_ratio = vision_aspect_ratio

    def load_processor(self, source: str, trust_remote_code: bool = False):
        return OnevisionProcessor.from_pretrained(source, trust_remote_code, self.vision_aspect_ratio)

    def tiled(self, batch: dict) -> list[bool]:
        """An image alone in its sample is tiled; the images of a several-image sample are not."""
        counts = batch.get("batch_num_images")
        if counts is None:
            return super().tiled(batch)
        return [int(n) == 1 for n in counts for _ in range(int(n))]

    def max_tiles(self, model: nn.Module) -> int:
        setting = self.vision_aspect_ratio or model.config.vision_aspect_ratio
        return int(setting.removeprefix("anyres_max_"))

    def check_grid(self, model: nn.Module, image: int, size: list[int], grid: torch.Tensor) -> None:
        vision = model.config.vision_config
        per_tile = (vision.image_size // vision.patch_size) ** 2
        height, width = grid.shape
        tiles = self.max_tiles(model)
        if math.sqrt(height * width / (tiles * per_tile)) > INTERPOLATION_RATIO:
            keeps = math.ceil(height * width / (per_tile * INTERPOLATION_RATIO**2))
            raise ValueError(
                f"llava_onevision: image {image} ({size[0]}x{size[1]} px) has {height}x{width} high-resolution "
                f"patches, more than anyres_max_{tiles} keeps, so the model interpolates them after the projector "
                "and its LLM tokens are no longer patches, which sinkflow routes. Set "
                f"model.family.vision_aspect_ratio=anyres_max_{keeps} (or more) to keep every patch, or use "
                "smaller images"
            )
