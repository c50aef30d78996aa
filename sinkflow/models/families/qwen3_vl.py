"""Qwen3-VL family (`Qwen/Qwen3-VL-*`): Qwen2-VL's pathway (2x2 patch merger, M-RoPE) plus DeepStack.

What differs from Qwen2-VL (docs/models.md#qwen3-vl):
- **DeepStack.** The states of a few intermediate ViT blocks (`deepstack_visual_indexes`) go through their own
  2x2 mergers (`deepstack_merger_list`) into one extra feature per merged token and level, which the language model
  adds to its hidden states at the image tokens after each of its first layers. A routed token's DeepStack features
  move with it (gathered by `Routed.sources`) and are dropped with it, at every level. The DeepStack mergers are part
  of the frozen ViT (as LLaMA-Factory registers them), so a strategy's replacement projector (the Dual-MLP's copies)
  replaces the main merger only.
- **Positions.** `get_rope_index` numbers images as Qwen2-VL does; Qwen3-VL interleaves the (t, h, w) frequencies
  inside its rotary embedding (and numbers video frames by timestamp), so the family's positions are Qwen2-VL's.

Workaround (transformers 5.23): `Qwen3VLModel.forward` computes DeepStack only from `pixel_values` and otherwise
always hands its language model `visual_pos_masks=None`; with `inputs_embeds` there is no argument to pass the
features through. `llm_inputs` therefore puts them in `mm_encoder_outputs` (the one multimodal input `generate`
accepts and hands the model on the prefill pass only, never on cached decode steps) under a private key; two forward
pre-hooks, registered once per model, carry them on: `Qwen3VLModel`'s turns the entry into a private keyword that
its `**kwargs` pass to the language model, whose hook turns it into `visual_pos_masks` / `deepstack_visual_embeds`
(for those inputs, or a continuation of them).
"""

from __future__ import annotations

import weakref
from typing import NamedTuple

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from sinkflow.models.families.qwen2_vl import Qwen2VLFamily
from sinkflow.pathway import Routed, VisualFeatures

# The private key in `mm_encoder_outputs`, then the private keyword on the way to the language model.
DEEPSTACK = "sinkflow_deepstack"
_HOOKED: weakref.WeakSet[nn.Module] = weakref.WeakSet()


class DeepStack(NamedTuple):
    """What the language model adds after its first layers: per level, one feature per image-token column (a tuple,
    so that tensor comparisons such as `torch.testing.assert_close` look inside)."""

    mask: torch.Tensor  # [B, L] bool: the image-token columns, in the order of the features' rows
    levels: tuple[torch.Tensor, ...]  # per DeepStack level [n_image_tokens, D_llm]

    def packed(self, source: torch.Tensor, column: torch.Tensor, valid: torch.Tensor) -> DeepStack:
        """The features laid out for packed rows (`models.packing`) whose column (r, c) holds row `source[r, c]`'s
        column `column[r, c]` (when `valid[r, c]`): each image column's feature, in the packed rows' order."""
        order = torch.full(self.mask.shape, -1, dtype=torch.long, device=self.mask.device)
        order[self.mask] = torch.arange(int(self.mask.sum()), device=self.mask.device)
        mask = self.mask[source, column] & valid
        taken = order[source, column][mask]
        return DeepStack(mask, tuple(level[taken.to(level.device)] for level in self.levels))


class Qwen3VLFamily(Qwen2VLFamily, name="qwen3_vl"):
    """Qwen3-VL (dense); `sink_tokens` as for Qwen2-VL."""

    variant = "qwen3_vl"

    def encode(self, model: nn.Module, batch: dict) -> VisualFeatures:
        tower = self.vision_tower(model)
        grid = batch["image_grid_thw"]
        out = tower(batch["pixel_values"].to(tower.dtype), grid_thw=grid)
        lengths = grid.prod(dim=-1).tolist()
        features = pad_sequence(list(out.last_hidden_state.split(lengths)), batch_first=True)
        visual = VisualFeatures(features=features, lengths=lengths, group=tower.spatial_merge_size**2)
        # Per level, per image [slots_i, D_llm]: merged-token features like the main merger's output.
        visual.extras["deepstack"] = [list(level.split(visual.slots)) for level in out.deepstack_features]
        return visual

    def select_extras(self, visual: VisualFeatures, images: list[int]) -> dict[str, object]:
        """Each image's DeepStack features, at every level."""
        return {"deepstack": [[level[i] for i in images] for level in visual.extras["deepstack"]]}

    def llm_inputs(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        image_columns: torch.Tensor,
        visual: VisualFeatures | None,
        routed: Routed | None,
    ) -> dict[str, torch.Tensor]:
        """The inputs plus each routed token's DeepStack features, in the order of the image-token columns."""
        if routed is None or not image_columns.any():
            return inputs
        levels = tuple(
            torch.cat([image[source.to(image.device)] for image, source in zip(level, routed.sources)])
            for level in visual.extras["deepstack"]
        )
        carry_deepstack(model)
        return {**inputs, "mm_encoder_outputs": {DEEPSTACK: DeepStack(image_columns, levels)}}


def carry_deepstack(model: nn.Module) -> None:
    """Register (once per model) the two hooks that hand `mm_encoder_outputs[DEEPSTACK]` to the language model."""
    inner = model.model
    if inner in _HOOKED:
        return
    inner.register_forward_pre_hook(_lift_deepstack, with_kwargs=True)
    inner.language_model.register_forward_pre_hook(_inject_deepstack, with_kwargs=True)
    _HOOKED.add(inner)


def _lift_deepstack(module: nn.Module, args: tuple, kwargs: dict):
    """On `Qwen3VLModel`: the private `mm_encoder_outputs` entry becomes a keyword its `**kwargs` pass on."""
    encoded = kwargs.get("mm_encoder_outputs")
    if not encoded or DEEPSTACK not in encoded:
        return None
    rest = {key: value for key, value in encoded.items() if key != DEEPSTACK}
    return args, {**kwargs, "mm_encoder_outputs": rest, DEEPSTACK: encoded[DEEPSTACK]}


def _inject_deepstack(module: nn.Module, args: tuple, kwargs: dict):
    """On the language model: the private keyword becomes its DeepStack arguments.

    The pass may run the inputs the features were built with followed by more columns (the analyses append a
    generated answer): those are text. Any other pass is refused."""
    if DEEPSTACK not in kwargs:
        return None
    deepstack = kwargs[DEEPSTACK]
    if kwargs.get("visual_pos_masks") is not None:
        raise ValueError("DeepStack features came both from pixel_values and from sinkflow's routed tokens")
    (rows, length), (built_rows, built_length) = kwargs["inputs_embeds"].shape[:2], deepstack.mask.shape
    if rows != built_rows or length < built_length:
        raise ValueError(
            f"DeepStack features for {(built_rows, built_length)} tokens reached a pass over {(rows, length)}: they "
            "belong to the prefill of the inputs they were built with (or a continuation of them)"
        )
    mask = torch.nn.functional.pad(deepstack.mask, (0, length - built_length), value=False)
    rest = {key: value for key, value in kwargs.items() if key != DEEPSTACK}
    return args, {**rest, "visual_pos_masks": mask, "deepstack_visual_embeds": list(deepstack.levels)}
