"""InternVL family (`OpenGVLab/InternVL3-*-hf`, transformers' `InternVLForConditionalGeneration`): InternViT on
448-px tiles -> pixel shuffle (2x2 patches folded into channels) -> MLP -> Qwen2.

What differs from LLaVA (docs/models.md#internvl3):
- Dynamic tiling: the processor cuts an image into crops plus a thumbnail (`num_patches` tiles per image), each its
  own ViT sequence. Features are the chosen ViT layer's per-patch states (CLS dropped) before the pixel shuffle,
  every tile's patches in 2x2-window order (`sinkflow.models.pixel_shuffle`), all of an image's tiles in one row:
  sinks are detected and counted per tile, an image is routed as one (its tiles share one placeholder block).
- The image block is `<img>` + 256 `<IMG_CONTEXT>` per tile + `</img>`: one contiguous run of placeholders.
- The HF processor also builds a video processor, which needs torchvision: `InternVLImages` reproduces its image
  path on the checkpoint's tokenizer and image processor.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from transformers import AutoImageProcessor, AutoTokenizer
from transformers.utils import cached_file

from sinkflow.checks import choice
from sinkflow.models import pixel_shuffle
from sinkflow.models.families.base import SinkTokens, VisualFamily
from sinkflow.models.processor import processor_chat_template
from sinkflow.pathway import VisualFeatures

FeatureSelect = Literal["default"]  # CLS dropped: the pixel shuffle folds a square patch grid


class InternVLImages:
    """InternVLProcessor's image path without its video processor: each image becomes `<img>`, `image_seq_length`
    `<IMG_CONTEXT>` per tile, `</img>`; images are tiled (`crop_to_patches`, InternVLProcessor's default)."""

    def __init__(self, tokenizer, image_processor, image_seq_length: int = 256):
        self.tokenizer, self.image_processor, self.image_seq_length = tokenizer, image_processor, image_seq_length
        self.image_token = tokenizer.context_image_token
        self.start_image_token, self.end_image_token = tokenizer.start_image_token, tokenizer.end_image_token
        # The processor passes crop_to_patches=True on every call; the collator calls the image processor itself.
        image_processor.crop_to_patches = True

    @classmethod
    def from_pretrained(cls, source: str | Path, trust_remote_code: bool = False) -> InternVLImages:
        """The checkpoint's tokenizer, image processor, chat template and `image_seq_length` (processor_config.json)."""
        tokenizer = AutoTokenizer.from_pretrained(str(source), trust_remote_code=trust_remote_code)
        if not tokenizer.chat_template:
            tokenizer.chat_template = processor_chat_template(source)
        config = cached_file(str(source), "processor_config.json", _raise_exceptions_for_missing_entries=False)
        length = json.loads(Path(config).read_text()).get("image_seq_length", 256) if config else 256
        image_processor = AutoImageProcessor.from_pretrained(str(source), trust_remote_code=trust_remote_code)
        return cls(tokenizer, image_processor, length)

    @property
    def chat_template(self) -> str | None:
        return self.tokenizer.chat_template

    def apply_chat_template(self, messages: list[dict], **kwargs):
        return self.tokenizer.apply_chat_template(messages, **kwargs)

    def replace_image_token(self, image_inputs: dict, image_idx: int) -> str:
        tiles = int(image_inputs["num_patches"][image_idx])
        return self.start_image_token + self.image_token * (self.image_seq_length * tiles) + self.end_image_token

    def save_pretrained(self, path: str | Path) -> None:
        self.tokenizer.save_pretrained(path)
        self.image_processor.save_pretrained(path)
        config = {"image_seq_length": self.image_seq_length, "processor_class": "InternVLProcessor"}
        (Path(path) / "processor_config.json").write_text(json.dumps(config, indent=2))


class InternVLFamily(VisualFamily, name="internvl"):
    """InternVL3 (`-hf`); `vision_feature_layer` defaults to the checkpoint's config (-1, the last layer);
    `sink_tokens` says how patch sinks map to folded tokens (see `VisualFamily`)."""

    def __init__(self, vision_feature_layer: int | None = None, sink_tokens: SinkTokens = "any_patch"):
        self.vision_feature_layer = vision_feature_layer
        self.sink_tokens = choice("model.family.sink_tokens", sink_tokens, SinkTokens)

    @classmethod
    def default_template(cls):
        from sinkflow.data.templates import ProcessorChatTemplate

        return ProcessorChatTemplate()

    @classmethod
    def build_tiny(cls, seed: int = 0, image_size: int | None = None, **sizes: int):
        from sinkflow.models.tiny_internvl import TinyInternVLSpec, build_tiny_internvl

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
