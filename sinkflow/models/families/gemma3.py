"""Gemma 3 family (`google/gemma-3-*-it`): SigLIP -> 4x4 average pooling projector -> Gemma 3 (bidirectional
attention over each image's tokens).

What differs from LLaVA (docs/models.md#gemma-3):
- **Features and sinks.** The projector-input features are SigLIP's last hidden states (after its final layer
  norm), one per patch of the fixed square the processor resizes every image to. The projector
  (`Gemma3MultiModalProjector`) averages each 4 x 4 block of patches into one LLM token (64 x 64 patches -> 256
  tokens), so the family orders the patches block by block (each token's 16 patches consecutive, `group` 16) and
  `project` puts them back in raster order for the projector, so that a copy of it (the Dual-MLP's) works as is. A
  pooled token is a sink if any of its 16 patches is (`sink_tokens: any_patch`) or by their joint norm (`own_norm`).
- **Attention.** Gemma 3 lets the tokens of one image attend to each other both ways (`token_type_ids`: 1 on image
  tokens; each run of them is one image). `llm_inputs` sets them from the merged rows' image columns, so the
  bidirectional block follows the routed tokens (and shrinks with dropped ones).
- **Processor.** transformers' `Gemma3Processor` loads here (no video processor). Its chat template writes `<bos>`
  itself and an answer's turn ends with `<end_of_turn>`: sinkflow tokenizes rendered prompts, so the tokenizer must
  not add a second `<bos>`, and greedy answers stop at `<end_of_turn>` (`chat_tokenizer`).
- **Pan-and-scan** (extra crops of a long image, each an image block of its own between text) is off in the released
  processor configs and refused here: one image must be one placeholder block.
"""

from __future__ import annotations

import inspect
import math
import types

import torch
from torch import nn

from sinkflow.models.families.base import VisualFamily, unnormalise
from sinkflow.pathway import Routed, VisualFeatures


class Gemma3Family(VisualFamily, name="gemma3"):
    """Gemma 3; `sink_tokens` says how patch sinks map to pooled tokens (see `VisualFamily`)."""

    @classmethod
    def build_tiny(cls, seed: int = 0, image_size: int | None = None, **sizes: int):
        from sinkflow.models.tiny_gemma3 import TinyGemma3Spec, build_tiny_gemma3

        model, processor = build_tiny_gemma3(
            TinyGemma3Spec(seed=seed, **({"image_size": image_size} if image_size else {}), **sizes)
        )
        return model, chat_tokenizer(processor)

    def load_processor(self, source: str, trust_remote_code: bool = False):
        return chat_tokenizer(super().load_processor(source, trust_remote_code))

    def vision_tower(self, model: nn.Module) -> nn.Module:
        return model.model.vision_tower

    def projector(self, model: nn.Module) -> nn.Module:
        return model.model.multi_modal_projector

    def language_model_prefix(self) -> str:
        return r"model\.language_model\."

    def image_token_id(self, model: nn.Module) -> int:
        return model.config.image_token_id

    def encode(self, model: nn.Module, batch: dict) -> VisualFeatures:
        crops = batch.get("num_crops")
        if crops is not None and bool((crops > 0).any()):
            raise ValueError(
                "Gemma 3 pan-and-scan crops are not supported (each crop is an image block of its own): set the image "
                "processor's do_pan_and_scan to false"
            )
        tower, projector = self.vision_tower(model), self.projector(model)
        hidden = tower(pixel_values=batch["pixel_values"].to(tower.dtype)).last_hidden_state
        order = pooled_order(projector.patches_per_image, projector.kernel_size).to(hidden.device)
        return VisualFeatures(features=hidden[:, order], group=projector.kernel_size**2)

    def project(
        self, model: nn.Module, visual: VisualFeatures, projector: nn.Module | None = None
    ) -> list[torch.Tensor]:
        projector = projector or self.projector(model)
        raster = torch.argsort(pooled_order(projector.patches_per_image, projector.kernel_size))
        return list(projector(visual.features[:, raster.to(visual.features.device)]))

    def patch_pixels(self, batch: dict, visual: VisualFeatures) -> torch.Tensor:
        """The pixels under each patch [n_images, patches, 3 * p * p], in the features' (pooled-block) order."""
        pixels = batch["pixel_values"]
        n_images, channels, height, width = pixels.shape
        side = math.isqrt(visual.features.shape[1])
        patches = pixels.reshape(n_images, channels, side, height // side, side, width // side)
        raster = patches.permute(0, 2, 4, 1, 3, 5).reshape(n_images, side * side, -1)
        return raster[:, pooled_order(side, math.isqrt(visual.group)).to(pixels.device)]

    def llm_inputs(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        image_columns: torch.Tensor,
        visual: VisualFeatures | None,
        routed: Routed | None,
    ) -> dict[str, torch.Tensor]:
        """The inputs plus `token_type_ids` (1 on the image tokens): the bidirectional blocks of Gemma 3's mask."""
        generate_from_embeds(model)
        if not image_columns.any():
            return inputs
        return {**inputs, "token_type_ids": image_columns.long()}

    def vision_attentions(self, model: nn.Module) -> list[nn.Module]:
        return [layer.self_attn for layer in self.vision_tower(model).encoder.layers]

    def feature_block(self, model: nn.Module) -> int:
        return len(self.vision_attentions(model)) - 1  # the last block (its output, layer-normed, feeds the projector)

    def attention_positions(
        self, model: nn.Module, batch: dict, visual: VisualFeatures, chunks: list[int]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """One sequence per image: its patches in raster order (SigLIP has no CLS); feature rows in pooled order."""
        projector = self.projector(model)
        side, device = projector.patches_per_image, visual.features.device
        order = pooled_order(side, projector.kernel_size).to(device)
        features, grids, start = [], [], 0
        for length in chunks:
            features.append(start + order)
            grids.append(start + torch.arange(side * side, device=device).view(side, side))
            start += length
        return features, grids

    def seen_images(self, batch: dict, processor) -> list[torch.Tensor]:
        return unnormalise(list(batch["pixel_values"]), processor.image_processor)


def pooled_order(side: int, pool: int) -> torch.Tensor:
    """[side * side]: the raster indices of a side x side patch grid ordered by pooled token (raster over the pooled
    grid), then within each pool x pool block in raster order."""
    cells = torch.arange(side * side).view(side // pool, pool, side // pool, pool)  # (token row, r, token col, c)
    return cells.permute(0, 2, 1, 3).flatten()


def generate_from_embeds(model: nn.Module) -> None:
    """Let `model.generate` take `inputs_embeds`. Workaround (transformers 5.23): `generate` refuses them unless
    `prepare_inputs_for_generation` names them in its signature; Gemma 3's passes them on to the generic one through
    `**kwargs` without naming them. The instance gets a bound method that names them (rebound by `deepcopy`)."""
    if "inputs_embeds" not in inspect.signature(model.prepare_inputs_for_generation).parameters:
        model.prepare_inputs_for_generation = types.MethodType(_prepare_inputs_naming_embeds, model)


def _prepare_inputs_naming_embeds(self, input_ids, inputs_embeds=None, **kwargs):
    """The model class's `prepare_inputs_for_generation`, with `inputs_embeds` in the signature."""
    return type(self).prepare_inputs_for_generation(self, input_ids, inputs_embeds=inputs_embeds, **kwargs)


def chat_tokenizer(processor):
    """`processor` with its tokenizer set up as sinkflow uses it with Gemma's chat template: the template writes
    `<bos>` itself (transformers' `apply_chat_template` then tokenizes without special tokens; sinkflow tokenizes
    the rendered text, which would add a second `<bos>`), and an answer ends its turn with `<end_of_turn>`, where
    generation must stop (the tokenizer's `<eos>` never comes after an answer)."""
    tokenizer = processor.tokenizer
    tokenizer.add_bos_token = False
    tokenizer.eos_token = "<end_of_turn>"
    return processor
