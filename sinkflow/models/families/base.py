"""The family interface: what one HF model family owns in the visual pathway (docs/contracts.md#the-visual-pathway).

pixels --encode--> ViT features [B, N, D_vit] --(detector, strategy)--> per-image token lists --merge--> LLM inputs.
A family never decides which tokens reach the LLM (that is the strategy's job); it only knows where features live
in its HF model, how its projector maps them, and how routed tokens become `inputs_embeds` and positions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
from torch import nn

from sinkflow.data.collate import IGNORE_INDEX
from sinkflow.sinks.strategies.base import Routed


@dataclass
class VisualFeatures:
    """Per-patch projector-input features of the images in a batch, in the order the projector consumes them.

    Images may have different patch counts (Qwen's dynamic resolution): rows are zero-padded to the longest and
    `lengths` gives each image's patches. `group` consecutive patches form one LLM token (1 for LLaVA, the 2x2
    merge window = 4 for Qwen); strategies route LLM tokens.
    """

    features: torch.Tensor  # [n_images, N, D], zero-padded after each image's `lengths[i]` patches
    lengths: list[int] | None = None  # None: every image has N patches
    group: int = 1
    planted: torch.Tensor | None = None  # [n_images, N] bool: simulated sinks (ground truth), when planted
    keys: list[str] = field(default_factory=list)  # one stable id per image (seeds per-image random choices)
    questions: list[str] = field(default_factory=list)  # the question asked about each image (routers read it)

    @property
    def patch_lengths(self) -> list[int]:
        return self.lengths or [self.features.shape[1]] * self.features.shape[0]

    @property
    def slots(self) -> list[int]:
        """LLM tokens (image placeholder tokens) per image."""
        return [n // self.group for n in self.patch_lengths]

    def valid(self) -> torch.Tensor:
        """[n_images, N] bool: real (not padding) patches."""
        positions = torch.arange(self.features.shape[1], device=self.features.device)
        return positions < torch.tensor(self.patch_lengths, device=self.features.device)[:, None]

    def to_tokens(self, patch_mask: torch.Tensor) -> torch.Tensor:
        """A patch mask [n_images, N] -> LLM-token mask [n_images, N // group]: a token is set if any patch is."""
        return patch_mask.view(patch_mask.shape[0], -1, self.group).any(dim=-1)

    def token_features(self) -> torch.Tensor:
        """[n_images, N // group, group * D]: each LLM token's patches side by side."""
        n_images, n_patches, dim = self.features.shape
        return self.features.reshape(n_images, n_patches // self.group, self.group * dim)


class VisualFamily(ABC):
    """Where a family's ViT features, projector, language model and image placeholders live.

    `sink_tokens` says how patch sinks become LLM-token sinks when several patches merge into one token:
    `any_patch` (a token is a sink if any of its patches is) or `own_norm` (the detector judges the token's
    patches together, by the norm of their concatenation). With one patch per token both are the same.
    """

    sink_tokens: str = "any_patch"

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
    def project(self, model: nn.Module, visual: VisualFeatures,
                projector: nn.Module | None = None) -> list[torch.Tensor]:
        """Every image's LLM tokens [slots_i, D_llm] through `projector` (by default the family's own; a strategy
        may pass a projector of the same architecture, e.g. DIYSink's second MLP)."""

    @abstractmethod
    def patch_pixels(self, batch: dict, visual: VisualFeatures) -> torch.Tensor:
        """[n_images, N, P]: the pixels under each patch, aligned with `visual.features` (for simulated sinks)."""

    def token_sinks(self, detector, visual: VisualFeatures) -> torch.Tensor:
        """The LLM-token sink mask [n_images, N // group] (see `sink_tokens`)."""
        if self.sink_tokens == "own_norm":
            return detector(visual.token_features(), visual.slots)
        return visual.to_tokens(detector(visual.features, visual.patch_lengths))

    # Inside the ViT, for analyses that look at its attention (relevance maps). A family without these still
    # trains, routes and evaluates.
    def vision_attentions(self, model: nn.Module) -> list[nn.Module]:
        """The attention module of each ViT block, in order."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its ViT attention modules")

    def feature_block(self, model: nn.Module) -> int:
        """Index (into `vision_attentions`) of the block whose output the projector reads."""
        raise NotImplementedError(f"{type(self).__name__} does not say which ViT block feeds its projector")

    def attention_positions(self, model: nn.Module, batch: dict, visual: VisualFeatures,
                            chunks: list[int]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Where features and patches sit in the ViT's attention sequences laid end to end.

        `chunks` are the lengths of the sequences one block attends within (an image, or a window), in the order
        it ran them. Per image: the position of each feature row [n_features], and the position of the patch in
        each cell of the image's patch grid [rows, cols].
        """
        raise NotImplementedError(f"{type(self).__name__} does not map its ViT sequence to the patch grid")

    def seen_images(self, batch: dict, processor) -> list[torch.Tensor]:
        """Each image as the ViT saw it: [H, W, 3] in [0, 1] (the processor's normalisation undone)."""
        raise NotImplementedError(f"{type(self).__name__} does not rebuild its images from pixel_values")

    def position_ids(self, model: nn.Module, batch: dict) -> torch.Tensor | None:
        """Position ids of the unrouted batch, [P, B, L], when the family cannot leave them to transformers.

        None (the default) means 1-D positions that transformers derives from the attention mask.
        """
        return None

    def merge(self, model: nn.Module, batch: dict, visual: VisualFeatures | None, routed: Routed | None,
              padding_side: str = "right") -> dict:
        """LLM inputs: text embeddings with each image's placeholders replaced by its routed tokens, in order.

        When every image keeps its placeholder count and positions stay contiguous, the tokens are scattered in
        place (exactly what transformers does). Otherwise each row is rebuilt: image blocks take the routed
        length, labels stay aligned (-100 on visual tokens), and rows are re-padded on `padding_side`
        (left for generation). With `routed.position_ids == "original"` every token keeps the position it had
        in the unrouted sequence (a visual token: its block start + its source patch index).
        """
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
            return inputs
        n_slots, slots = int(placeholders.sum()), visual.slots
        if n_slots != sum(slots):
            raise ValueError(f"the batch has {n_slots} image placeholder tokens but its {len(slots)} images need "
                             f"{sum(slots)}; the placeholders must be expanded by the processor")
        tokens = [t.to(inputs_embeds.device, inputs_embeds.dtype) for t in routed.tokens]
        if routed.position_ids == "contiguous" and [len(t) for t in tokens] == slots:
            inputs["inputs_embeds"] = inputs_embeds.masked_scatter(placeholders.unsqueeze(-1), torch.cat(tokens))
            return inputs
        return _rebuild(inputs, placeholders, slots, tokens, routed, padding_side)


def unnormalise(images: list[torch.Tensor], image_processor) -> list[torch.Tensor]:
    """[3, H, W] normalised pixels -> [H, W, 3] in [0, 1], with the image processor's mean and std."""
    mean = torch.tensor(image_processor.image_mean).view(3, 1, 1)
    std = torch.tensor(image_processor.image_std).view(3, 1, 1)
    return [(image.float().cpu() * std + mean).clamp(0, 1).permute(1, 2, 0) for image in images]


def _rebuild(inputs: dict, placeholders: torch.Tensor, slots: list[int], tokens: list[torch.Tensor],
             routed: Routed, padding_side: str) -> dict:
    """Rows with each image block replaced by its routed tokens, re-padded to a common length.

    A visual token's position is that of the block slot it came from (`original`) or of the block slot it now
    fills (`contiguous`); text keeps its position. Positions are passed on when the family gives them (M-RoPE)
    or `original` asks for them; otherwise transformers numbers the rebuilt rows consecutively.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    embeds, mask, labels = inputs["inputs_embeds"], inputs["attention_mask"], inputs.get("labels")
    given = inputs.get("position_ids")
    # Positions of the unrouted sequence as [P, B, L]; 1-D ones count from each row's first real token.
    positions = given if given is not None else (mask.long().cumsum(-1) - 1).clamp_min(0)[None]
    rows: list[dict[str, torch.Tensor]] = []
    image = 0
    for r in range(embeds.shape[0]):
        columns = placeholders[r].nonzero().squeeze(1).tolist()
        parts: dict[str, list[torch.Tensor]] = {"embeds": [], "mask": [], "labels": [], "positions": []}
        start, used = 0, 0
        while used < len(columns):
            first, n = columns[used], slots[image]
            if columns[used + n - 1] != first + n - 1:
                raise ValueError(f"row {r}: the placeholders of image {image} are not contiguous")
            _take_text(parts, embeds[r], mask[r], labels, r, positions[:, r], start, first)
            routed_tokens, sources = tokens[image], routed.sources[image].to(embeds.device)
            taken = sources if routed.position_ids == "original" else torch.arange(len(sources), device=embeds.device)
            parts["embeds"].append(routed_tokens)
            parts["mask"].append(mask.new_ones(len(routed_tokens)))
            parts["labels"].append(torch.full((len(routed_tokens),), IGNORE_INDEX, device=embeds.device))
            parts["positions"].append(positions[:, r, first + taken])
            start, used, image = first + n, used + n, image + 1
        _take_text(parts, embeds[r], mask[r], labels, r, positions[:, r], start, embeds.shape[1])
        rows.append({k: torch.cat(v, dim=-1 if k == "positions" else 0) for k, v in parts.items()})
    length = max(len(row["mask"]) for row in rows)
    out = {
        "inputs_embeds": torch.stack([_pad(row["embeds"], length, 0.0, padding_side) for row in rows]),
        "attention_mask": torch.stack([_pad(row["mask"], length, 0, padding_side) for row in rows]),
    }
    if labels is not None:
        out["labels"] = torch.stack([_pad(row["labels"], length, IGNORE_INDEX, padding_side) for row in rows])
    if given is not None or routed.position_ids == "original":
        stacked = torch.stack([_pad(row["positions"].T, length, 0, padding_side).T for row in rows], dim=1)
        out["position_ids"] = stacked if given is not None else stacked[0]
    return out


def _take_text(parts: dict, embeds, mask, labels, row: int, positions, start: int, end: int) -> None:
    """Append the text columns [start, end) of one row."""
    parts["embeds"].append(embeds[start:end])
    parts["mask"].append(mask[start:end])
    parts["labels"].append(labels[row, start:end] if labels is not None
                           else torch.full((end - start,), IGNORE_INDEX, device=embeds.device))
    parts["positions"].append(positions[:, start:end])


def _pad(values: torch.Tensor, length: int, fill, side: str) -> torch.Tensor:
    """Pad a row's first dimension to `length` with `fill` on `side`."""
    extra = length - values.shape[0]
    if extra == 0:
        return values
    pad = torch.full((extra, *values.shape[1:]), fill, dtype=values.dtype, device=values.device)
    return torch.cat([pad, values] if side == "left" else [values, pad])
