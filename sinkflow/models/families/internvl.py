"""InternVL family (`OpenGVLab/InternVL3-*-hf`, transformers' `InternVLForConditionalGeneration`): InternViT on
448-px tiles -> pixel shuffle (2x2 patches folded into channels) -> MLP -> Qwen2.

What differs from LLaVA (docs/models.md#internvl3):
- Dynamic tiling: the processor cuts an image into crops plus a thumbnail (`num_patches` tiles per image), each its
  own ViT sequence. Features are the chosen ViT layer's per-patch states (CLS dropped) before the pixel shuffle,
  every tile's patches in 2x2-window order (`sinkflow.models.pixel_shuffle`), all of an image's tiles in one row:
  sinks are detected and counted per tile, an image is routed as one (its tiles share one placeholder block).
- The image block is `<img>` + 256 `<IMG_CONTEXT>` per tile + `</img>`: one contiguous run of placeholders.
- The HF processor also builds a video processor, which needs torchvision: `tiled_processors.InternVLImages`
  reproduces its image path on the checkpoint's tokenizer and image processor.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from sinkflow.checks import choice
from sinkflow.models import pixel_shuffle
from sinkflow.models.families.base import SinkTokens, VisualFamily
from sinkflow.models.tiled_processors import InternVLImages
from sinkflow.pathway import VisualFeatures

FeatureSelect = Literal["default"]  # CLS dropped: the pixel shuffle folds a square patch grid


class InternVLFamily(VisualFamily, name="internvl"):
    """InternVL3 (`-hf`); `vision_feature_layer` defaults to the checkpoint's config (-1, the last layer);
    `sink_tokens` says how patch sinks map to folded tokens (see `VisualFamily`)."""

    def __init__(self, vision_feature_layer: int | None = None, sink_tokens: SinkTokens = "any_patch"):
        super().__init__(sink_tokens)
        self.vision_feature_layer = vision_feature_layer

    @classmethod
    def build_tiny(cls, seed: int = 0, image_size: int | None = None, **sizes: int):
        from sinkflow.models.tiny_internvl import TinyInternVLSpec, build_tiny_internvl

        # `image_size`: the tile side (an image of that size is one tile, or tiled when its aspect ratio asks for it).
        return build_tiny_internvl(TinyInternVLSpec(seed=seed, **({"tile": image_size} if image_size else {}), **sizes))

    def load_processor(self, source: str, trust_remote_code: bool = False):
        return InternVLImages.from_pretrained(source, trust_remote_code=trust_remote_code)

    def vision_tower(self, model: nn.Module) -> nn.Module:
        return model.model.vision_tower

    def projector(self, model: nn.Module) -> nn.Module:
        return model.model.multi_modal_projector

    def language_model_prefix(self) -> str:
        return r"model\.language_model\."

    def image_token_id(self, model: nn.Module) -> int:
        return model.config.image_token_id

    def _layer(self, model: nn.Module) -> int:
        layer = model.config.vision_feature_layer if self.vision_feature_layer is None else self.vision_feature_layer
        if not isinstance(layer, int):
            raise ValueError(f"model.family.vision_feature_layer must be one layer for InternVL, got {layer!r}")
        return layer

    def _scale(self, model: nn.Module) -> int:
        return round(1 / model.config.downsample_ratio)

    def encode(self, model: nn.Module, batch: dict) -> VisualFeatures:
        choice("vision_feature_select_strategy", model.config.vision_feature_select_strategy, FeatureSelect)
        tower = self.vision_tower(model)
        layer = self._layer(model)
        out = tower(pixel_values=batch["pixel_values"].to(tower.dtype), output_hidden_states=layer != -1)
        # transformers reads -1 as the last output (after the tower's final norm), any other index from hidden_states.
        states = out.last_hidden_state if layer == -1 else out.hidden_states[layer]
        return pixel_shuffle.tile_features(states[:, 1:], batch["num_patches"].tolist(), self._scale(model))

    def project(
        self, model: nn.Module, visual: VisualFeatures, projector: nn.Module | None = None
    ) -> list[torch.Tensor]:
        return pixel_shuffle.project(projector or self.projector(model), visual)

    def patch_pixels(self, batch: dict, visual: VisualFeatures) -> torch.Tensor:
        return pixel_shuffle.tile_patches(batch["pixel_values"], visual, batch["num_patches"].tolist())

    def vision_attentions(self, model: nn.Module) -> list[nn.Module]:
        return [layer.attention for layer in self.vision_tower(model).encoder.layer]

    def feature_block(self, model: nn.Module) -> int:
        """`hidden_states[i]` is block i - 1's output (0: the embeddings); -1 is the last block's."""
        layer, n_blocks = self._layer(model), len(self.vision_attentions(model))
        hidden = layer % (n_blocks + 1)
        if hidden == 0:
            raise ValueError("the projector reads the ViT embeddings (vision_feature_layer 0): no attention block")
        return hidden - 1

    def feature_positions(self, model, batch, visual, chunks):
        """Each tile is one sequence, [CLS, patches in raster order]; a feature is a patch in window order."""
        side = math.isqrt(chunks[0] - 1)
        order = pixel_shuffle.window_order(side, self._scale(model))
        starts = torch.tensor([0, *chunks[:-1]]).cumsum(0)
        tiles = batch["num_patches"].tolist()
        first = [sum(tiles[:i]) for i in range(len(tiles))]
        return [torch.cat([starts[first[i] + t] + 1 + order for t in range(n)]) for i, n in enumerate(tiles)]

    def attention_positions(self, model, batch, visual, chunks):
        raise NotImplementedError(
            f"{type(self).__name__} does not map its ViT sequences to one patch grid per image: the processor cuts "
            "each image into crops and a thumbnail without recording the crops' arrangement"
        )

    def seen_images(self, batch: dict, processor) -> list[torch.Tensor]:
        raise NotImplementedError(
            f"{type(self).__name__} does not redraw its images: the processor cuts each image into crops and a "
            "thumbnail without recording the crops' arrangement"
        )
