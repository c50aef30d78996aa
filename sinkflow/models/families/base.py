"""The family interface: everything specific to one HF model family's visual pathway (DESIGN.md §1).

pixels --encode--> ViT features [B, N, D_vit] --(detector, strategy)--> per-image token lists --merge--> LLM inputs.
A family never decides which tokens reach the LLM (that is the strategy's job); it only knows where features live
in its HF model, how its projector maps them, and how routed tokens become `inputs_embeds` and positions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class VisualFeatures:
    """Projector-input features of the images in a batch, in the order the projector consumes them."""

    features: torch.Tensor  # [n_images, N, D_vit]
    grid: tuple[int, int]  # patch grid (rows, cols) of one image, raster order


class VisualFamily(ABC):
    """Where a family's ViT features, projector, language model and image placeholders live."""

    @abstractmethod
    def vision_tower(self, model: nn.Module) -> nn.Module:
        """The ViT module (frozen by default)."""

    @abstractmethod
    def projector(self, model: nn.Module) -> nn.Module:
        """The module mapping ViT features to LLM embeddings (trained at its own learning rate)."""

    @abstractmethod
    def language_model_prefix(self) -> str:
        """Regex prefix of the language model's module names; LoRA targets are anchored to it."""

    @abstractmethod
    def image_token_id(self, model: nn.Module) -> int:
        """Id of the image placeholder token in `input_ids`."""

    @abstractmethod
    def encode(self, model: nn.Module, batch: dict) -> VisualFeatures:
        """Run the ViT on the batch's images and return the projector-input features."""

    @abstractmethod
    def project(self, model: nn.Module, features: torch.Tensor) -> torch.Tensor:
        """Map projector-input features [..., D_vit] to LLM embeddings [..., D_llm] with the family's projector."""

    def merge(self, model: nn.Module, batch: dict, visual_tokens: list[torch.Tensor]) -> dict:
        """LLM inputs: text embeddings with each image's placeholders filled by its routed tokens, in order."""
        embed = model.get_input_embeddings()
        input_ids = batch["input_ids"]
        inputs_embeds = embed(input_ids)
        placeholders = input_ids == self.image_token_id(model)
        if visual_tokens:
            tokens = torch.cat(visual_tokens).to(inputs_embeds.device, inputs_embeds.dtype)
            n_slots = int(placeholders.sum())
            if n_slots != tokens.shape[0]:
                raise ValueError(
                    f"the batch has {n_slots} image placeholder tokens but the strategy routed {tokens.shape[0]} "
                    "visual tokens; strategies that change the token count must expand the placeholders"
                )
            inputs_embeds = inputs_embeds.masked_scatter(placeholders.unsqueeze(-1), tokens)
        elif placeholders.any():
            raise ValueError("the batch has image placeholder tokens but no images")
        return {"inputs_embeds": inputs_embeds, "attention_mask": batch["attention_mask"]}
