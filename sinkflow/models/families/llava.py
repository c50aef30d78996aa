"""LLaVA family (LLaVA-1.5 and the `llava-hf` checkpoints): CLIP ViT -> MLP projector -> Llama/Vicuna."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from sinkflow.checks import choice
from sinkflow.models.families.base import VisualFamily, unnormalise
from sinkflow.pathway import VisualFeatures

FeatureSelect = Literal["default", "full"]


class LlavaFamily(VisualFamily, name="llava"):
    """Projector-input features are `hidden_states[vision_feature_layer]` of the ViT, CLS dropped unless `full`.

    `vision_feature_layer` / `vision_feature_select_strategy` default to the checkpoint's config; setting them here
    overrides the config for this run (e.g. to study another layer).
    """

    def __init__(
        self, vision_feature_layer: int | None = None, vision_feature_select_strategy: FeatureSelect | None = None
    ):
        if vision_feature_select_strategy is not None:
            choice("model.family.vision_feature_select_strategy", vision_feature_select_strategy, FeatureSelect)
        self.vision_feature_layer = vision_feature_layer
        self.vision_feature_select_strategy = vision_feature_select_strategy

    @classmethod
    def default_template(cls):
        from sinkflow.data.templates import VicunaV1

        return VicunaV1()

    @classmethod
    def build_tiny(cls, seed: int = 0, image_size: int | None = None, **sizes: int):
        from sinkflow.models.tiny import TinyLlavaSpec, build_tiny_llava

        return build_tiny_llava(TinyLlavaSpec(seed=seed, **({"image_size": image_size} if image_size else {}), **sizes))

    def vision_tower(self, model: nn.Module) -> nn.Module:
        return model.model.vision_tower

    def projector(self, model: nn.Module) -> nn.Module:
        return model.model.multi_modal_projector

    def language_model_prefix(self) -> str:
        return r"model\.language_model\."

    def image_token_id(self, model: nn.Module) -> int:
        return model.config.image_token_id

    def _layer(self, model: nn.Module):
        return model.config.vision_feature_layer if self.vision_feature_layer is None else self.vision_feature_layer

    def _select(self, model: nn.Module) -> str:
        chosen = self.vision_feature_select_strategy
        return model.config.vision_feature_select_strategy if chosen is None else chosen

    def encode(self, model: nn.Module, batch: dict) -> VisualFeatures:
        tower = self.vision_tower(model)
        pixel_values = batch["pixel_values"].to(tower.dtype)
        hidden = tower(pixel_values, output_hidden_states=True, return_dict=True).hidden_states
        layer = self._layer(model)
        layers = [layer] if isinstance(layer, int) else list(layer)
        keep_cls = self._select(model) == "full"
        # A list of layers is concatenated on channels, as in transformers' LlavaModel.get_image_features.
        features = torch.cat([hidden[i] if keep_cls else hidden[i][:, 1:] for i in layers], dim=-1)
        return VisualFeatures(features=features)

    def project(
        self, model: nn.Module, visual: VisualFeatures, projector: nn.Module | None = None
    ) -> list[torch.Tensor]:
        return list((projector or self.projector(model))(visual.features))

    def patch_pixels(self, batch: dict, visual: VisualFeatures) -> torch.Tensor:
        """Raster-order pixel patches [n_images, rows * cols, 3 * p * p] of the square patch grid."""
        pixels = batch["pixel_values"]
        n_images, channels, height, width = pixels.shape
        side = math.isqrt(visual.features.shape[1])
        if side * side != visual.features.shape[1] or height % side or width % side:
            raise ValueError(
                f"{visual.features.shape[1]} features do not tile {height}x{width} px images in a square "
                "patch grid (a CLS token kept? use vision_feature_select_strategy 'default')"
            )
        patches = pixels.reshape(n_images, channels, side, height // side, side, width // side)
        return patches.permute(0, 2, 4, 1, 3, 5).reshape(n_images, side * side, -1)

    def vision_attentions(self, model: nn.Module) -> list[nn.Module]:
        tower = self.vision_tower(model)
        encoder = getattr(tower, "vision_model", tower).encoder  # CLIP / SigLIP vision models
        return [layer.self_attn for layer in encoder.layers]

    def feature_block(self, model: nn.Module) -> int:
        """`hidden_states[i]` is block i - 1's output (0: the embeddings); with several layers, the deepest."""
        layer, n_blocks = self._layer(model), len(self.vision_attentions(model))
        hidden = max(i % (n_blocks + 1) for i in ([layer] if isinstance(layer, int) else layer))
        if hidden == 0:
            raise ValueError("the projector reads the ViT embeddings (vision_feature_layer 0): no attention block")
        return hidden - 1

    def attention_positions(
        self, model: nn.Module, batch: dict, visual: VisualFeatures, chunks: list[int]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """One sequence per image: [CLS (when the tower has one), patches in raster order]."""
        patch = self.vision_tower(model).config.patch_size
        height, width = batch["pixel_values"].shape[-2:]
        rows, cols = height // patch, width // patch
        n_features, device = visual.features.shape[1], visual.features.device
        features, grids, start = [], [], 0
        for length in chunks:
            features.append(start + length - n_features + torch.arange(n_features, device=device))
            grids.append(start + length - rows * cols + torch.arange(rows * cols, device=device).view(rows, cols))
            start += length
        return features, grids

    def seen_images(self, batch: dict, processor) -> list[torch.Tensor]:
        return unnormalise(list(batch["pixel_values"]), processor.image_processor)
