"""The family interface: what one HF model family owns in the visual pathway (docs/contracts.md#the-visual-pathway).

pixels --encode--> ViT features [B, N, D_vit] --(detector, strategy)--> per-image token lists --merge--> LLM inputs.
A family never decides which tokens reach the LLM (that is the strategy's job); it only knows where features live
in its HF model, how its projector maps them, and how routed tokens become `inputs_embeds` and positions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import replace
from typing import ClassVar, Literal

import torch
from torch import nn

from sinkflow.checks import choice
from sinkflow.data.templates import ProcessorChatTemplate
from sinkflow.pathway import LlmColumns, PaddingSide, Routed, VisualFeatures, by_run, rebuild_rows, with_fixed
from sinkflow.registry import Registry

SinkTokens = Literal["any_patch", "own_norm"]
# Detector(features [n_images, N, D], lengths) -> sink mask [n_images, N] (a sinkflow.sinks.detectors rule).
Detector = Callable[[torch.Tensor, list[int]], torch.Tensor]


class VisualFamily(ABC):
    """Where a family's ViT features, projector, language model and image placeholders live.

    `sink_tokens` says how patch sinks become LLM-token sinks when several patches merge into one token:
    `any_patch` (a token is a sink if any of its patches is) or `own_norm` (the detector judges the token's
    patches together, by the norm of their concatenation). With one patch per token both are the same.
    """

    name: ClassVar[str]
    sink_tokens: SinkTokens = "any_patch"

    def __init_subclass__(cls, name: str | None = None, **kwargs):
        super().__init_subclass__(**kwargs)
        if name is not None:
            cls.name = name
            FAMILIES.register(name, cls)

    def __init__(self, sink_tokens: SinkTokens = "any_patch"):
        self.sink_tokens = choice("model.family.sink_tokens", sink_tokens, SinkTokens)

    @classmethod
    def default_template(cls):
        """The conversation template of the family's checkpoints (`model.template` in its configs): by default the
        checkpoint's own chat template."""
        return ProcessorChatTemplate()

    @classmethod
    def build_tiny(cls, seed: int = 0, image_size: int | None = None, **sizes: int) -> tuple[nn.Module, object]:
        """A tiny random model and processor of this family, built offline from a config (tests and benches):
        `image_size` the side of the images it sees, `sizes` the spec's layer sizes (`models/tiny.py`)."""
        raise NotImplementedError(f"{cls.__name__} has no tiny builder")

    def load_processor(self, source: str, trust_remote_code: bool = False):
        """The checkpoint's processor (tokenizer, image processor, chat template)."""
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)

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
    def project(
        self, model: nn.Module, visual: VisualFeatures, projector: nn.Module | None = None
    ) -> list[torch.Tensor]:
        """Every image's LLM tokens [slots_i, D_llm] through `projector` (by default the family's own; a strategy
        may pass a projector of the same architecture, e.g. DIYSink's second MLP)."""

    @abstractmethod
    def patch_pixels(self, batch: dict, visual: VisualFeatures) -> torch.Tensor:
        """[n_images, N, P]: the pixels under each patch, aligned with `visual.features` (for simulated sinks)."""

    def token_sinks(self, detector: Detector, visual: VisualFeatures) -> torch.Tensor:
        """The LLM-token sink mask [n_images, N // group] (see `sink_tokens`)."""
        return visual.detect(detector, own_norm=self.sink_tokens == "own_norm")

    def fixed_tokens(self, model: nn.Module, visual: VisualFeatures) -> list[torch.Tensor]:
        """Per image, the embeddings [n_fixed_i, D_llm] of the fixed tokens of its layout (`VisualFeatures.layouts`),
        in block order; only families whose blocks hold tokens that are not visual ones provide them."""
        raise NotImplementedError(f"{type(self).__name__} lays out no fixed tokens")

    def llm_inputs(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        image_columns: torch.Tensor,
        visual: VisualFeatures | None,
        routed: Routed | None,
    ) -> dict[str, torch.Tensor]:
        """The merged inputs plus what the family's language model reads beside the embeddings (Gemma 3's image token
        types, Qwen3-VL's DeepStack features); `image_columns` [B, L] marks the columns holding image tokens."""
        return inputs

    # Inside the ViT, for analyses that look at its attention (relevance maps). A family without these still
    # trains, routes and evaluates.
    def vision_attentions(self, model: nn.Module) -> list[nn.Module]:
        """The attention module of each ViT block, in order."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its ViT attention modules")

    def feature_block(self, model: nn.Module) -> int:
        """Index (into `vision_attentions`) of the block whose output the projector reads."""
        raise NotImplementedError(f"{type(self).__name__} does not say which ViT block feeds its projector")

    def attention_positions(
        self, model: nn.Module, batch: dict, visual: VisualFeatures, chunks: list[int]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Where features and patches sit in the ViT's attention sequences laid end to end.

        `chunks` are the lengths of the sequences one block attends within (an image, or a window), in the order
        it ran them. Per image: the position of each feature row [n_features], and the position of the patch in
        each cell of the image's patch grid [rows, cols].
        """
        raise NotImplementedError(f"{type(self).__name__} does not map its ViT sequence to the patch grid")

    def feature_positions(
        self, model: nn.Module, batch: dict, visual: VisualFeatures, chunks: list[int]
    ) -> list[torch.Tensor]:
        """Per image, the position of each feature row [n_features] in the sequences its ViT blocks attend within
        (`attention_positions` without the grids, for families that cannot draw one)."""
        return self.attention_positions(model, batch, visual, chunks)[0]

    def seen_images(self, batch: dict, processor) -> list[torch.Tensor]:
        """Each image as the ViT saw it: [H, W, 3] in [0, 1] (the processor's normalisation undone)."""
        raise NotImplementedError(f"{type(self).__name__} does not rebuild its images from pixel_values")

    def select_images(
        self, batch: dict, visual: VisualFeatures, images: list[int]
    ) -> tuple[dict[str, torch.Tensor], VisualFeatures]:
        """What `merge` reads of the images at `images` (indices into the batch's images, repeats allowed), in that
        order: the batch's image inputs it reads (`image_inputs`) and the features with their extras
        (`select_extras`). A batch asking questions about those images (`Collator.ask`) merges with them, so the
        images are encoded and routed once however often they are asked about."""
        return self.image_inputs(batch, images), visual.select(images, self.select_extras(visual, images))

    def image_inputs(self, batch: dict, images: list[int]) -> dict[str, torch.Tensor]:
        """The batch's image inputs that `merge` reads (through `position_ids`), for the images at `images`: none
        by default."""
        return {}

    def select_extras(self, visual: VisualFeatures, images: list[int]) -> dict[str, object]:
        """`visual.extras` for the images at `images`: a family that keeps extras says how they follow its images."""
        if visual.extras:
            raise NotImplementedError(
                f"{type(self).__name__} keeps extras {sorted(visual.extras)} but does not select them per image"
            )
        return {}

    def position_ids(self, model: nn.Module, batch: dict) -> torch.Tensor | None:
        """Position ids of the unrouted batch, [P, B, L], when the family cannot leave them to transformers.

        None (the default) means 1-D positions that transformers derives from the attention mask.
        """
        return None

    def merge(
        self,
        model: nn.Module,
        batch: dict,
        visual: VisualFeatures | None,
        routed: Routed | None,
        padding_side: PaddingSide = "right",
        sinks: torch.Tensor | None = None,
    ) -> tuple[dict[str, torch.Tensor], LlmColumns]:
        """LLM inputs, and where the image, visual and sink tokens landed in them (`sinks`: the detector's mask over
        each image's LLM-token slots, when it ran). The inputs: text embeddings with each image's placeholders
        replaced by its routed tokens, in order (a row with several images holds one placeholder block per image; the
        images fill them in turn).

        When every image keeps its placeholder count and positions stay contiguous, the tokens are scattered in
        place (exactly what transformers does). Otherwise each row is rebuilt (`sinkflow.pathway.rebuild_rows`):
        image blocks take the routed length, labels stay aligned, and rows are re-padded on `padding_side`
        (left for generation). With `routed.position_ids == "original"` every token keeps the position it had
        in the unrouted sequence (a visual token: its block start + its source patch index). A block with fixed
        tokens (`VisualFeatures.layouts`) keeps them in their slots and refills the rest (`pathway.with_fixed`). An
        image whose placeholders come in several runs (`VisualFeatures.runs`) fills each run with its own tokens in
        the image's routed order (`pathway.by_run`).
        """
        choice("padding_side", padding_side, PaddingSide)
        input_ids = batch["input_ids"]
        inputs_embeds = model.get_input_embeddings()(input_ids)
        placeholders = input_ids == self.image_token_id(model)
        labels = batch.get("labels")
        inputs = {"inputs_embeds": inputs_embeds, "attention_mask": batch["attention_mask"]}
        if labels is not None:
            inputs["labels"] = labels
        positions = self.position_ids(model, batch)
        if positions is not None:
            inputs["position_ids"] = positions
        if routed is None:
            if placeholders.any():
                raise ValueError("the batch has image placeholder tokens but no images")
            columns = LlmColumns.of(inputs, placeholders, placeholders, None)
            return self.llm_inputs(model, inputs, placeholders, None, None), columns
        n_slots, blocks = int(placeholders.sum()), visual.blocks
        if n_slots != sum(blocks):
            raise ValueError(
                f"the batch has {n_slots} image placeholder tokens but its {len(blocks)} images need "
                f"{sum(blocks)}; the placeholders must be expanded by the processor"
            )
        # Per routed token: visual (1) and sink (1) flags, laid out exactly as the tokens are.
        flags = [
            torch.stack(
                [torch.ones(len(s), device=s.device), sinks[i, s.to(sinks.device)].float().to(s.device)]
                if sinks is not None
                else [torch.ones(len(s), device=s.device), torch.zeros(len(s), device=s.device)],
                -1,
            )
            for i, s in enumerate(routed.sources)
        ]
        flags = replace(routed, tokens=flags)
        if visual.layouts:
            fixed = self.fixed_tokens(model, visual)
            laid_out = with_fixed(routed, visual.layouts, fixed)
            flags = with_fixed(flags, visual.layouts, [f.new_zeros(len(f), 2) for f in fixed])
        else:
            laid_out = routed
        if visual.runs:  # from here on each placeholder run is a block of its own
            laid_out, blocks = by_run(laid_out, visual.runs)
            flags, _ = by_run(flags, visual.runs)
        if laid_out.position_ids == "contiguous" and [len(t) for t in laid_out.tokens] == blocks:
            tokens = torch.cat(laid_out.tokens).to(inputs_embeds.device, inputs_embeds.dtype)
            inputs["inputs_embeds"] = inputs_embeds.masked_scatter(placeholders.unsqueeze(-1), tokens)
            image_columns = placeholders
        else:
            inputs, image_columns = rebuild_rows(inputs, placeholders, blocks, laid_out, padding_side)
        # The image columns in row-major order hold the laid-out tokens in order, in both paths.
        token_flags = torch.cat(flags.tokens).to(image_columns.device) > 0
        visual_columns, sink_columns = torch.zeros_like(image_columns), torch.zeros_like(image_columns)
        visual_columns[image_columns], sink_columns[image_columns] = token_flags[:, 0], token_flags[:, 1]
        columns = LlmColumns.of(inputs, image_columns, visual_columns, sink_columns if sinks is not None else None)
        return self.llm_inputs(model, inputs, image_columns, visual, routed), columns


def unnormalise(images: list[torch.Tensor], image_processor) -> list[torch.Tensor]:
    """[3, H, W] normalised pixels -> [H, W, 3] in [0, 1], with the image processor's mean and std."""
    mean = torch.tensor(image_processor.image_mean).view(3, 1, 1)
    std = torch.tensor(image_processor.image_std).view(3, 1, 1)
    return [(image.float().cpu() * std + mean).clamp(0, 1).permute(1, 2, 0) for image in images]


FAMILIES: Registry[type[VisualFamily]] = Registry("family", "sinkflow.models.families")
