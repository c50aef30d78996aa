"""Qwen2-VL family (`Qwen/Qwen2-VL-*`): dynamic-resolution ViT -> 2x2 patch merger -> Qwen2 with M-RoPE.

What differs from LLaVA (docs/models.md#qwen2-vl-and-qwen25-vl):
- Features are the per-patch states of the last vision block, before the merger; images have different patch
  counts (`image_grid_thw`), and every 4 consecutive patches (one 2x2 window) become one LLM token.
- The projector is the patch merger, which lives inside the vision tower.
- Positions are 3-D M-RoPE ids from `get_rope_index` (plus the 1-D text positions generate uses), built here for
  the unrouted batch and carried with the tokens when a strategy moves or drops them.
- The HF processor needs torchvision (for video); the tokenizer and image processor are loaded directly.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from sinkflow.models.families.base import VisualFamily, unnormalise
from sinkflow.models.processor import ImageTextProcessor
from sinkflow.pathway import VisualFeatures


class Qwen2VLFamily(VisualFamily, name="qwen2_vl"):
    """Qwen2-VL; `sink_tokens` says how patch sinks map to merged tokens (see `VisualFamily`)."""

    variant = "qwen2_vl"  # the tiny builder's model class

    @classmethod
    def build_tiny(cls, seed: int = 0, image_size: int | None = None, **sizes: int):
        from sinkflow.models.tiny_qwen import TinyQwenSpec, build_tiny_qwen

        pixels = {"min_pixels": image_size**2, "max_pixels": image_size**2} if image_size else {}
        return build_tiny_qwen(TinyQwenSpec(variant=cls.variant, seed=seed, **pixels, **sizes))

    def load_processor(self, source: str, trust_remote_code: bool = False):
        return ImageTextProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)

    def vision_tower(self, model: nn.Module) -> nn.Module:
        return model.model.visual

    def projector(self, model: nn.Module) -> nn.Module:
        return model.model.visual.merger

    def language_model_prefix(self) -> str:
        return r"model\.language_model\."

    def image_token_id(self, model: nn.Module) -> int:
        return model.config.image_token_id

    def merge_window_order(self, model: nn.Module, hidden: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """The last block's states in the processor's patch order (Qwen2-VL keeps it; Qwen2.5-VL does not)."""
        return hidden

    def encode(self, model: nn.Module, batch: dict) -> VisualFeatures:
        tower = self.vision_tower(model)
        grid = batch["image_grid_thw"]
        out = tower(batch["pixel_values"].to(tower.dtype), grid_thw=grid)
        hidden = self.merge_window_order(model, out.last_hidden_state, grid)
        lengths = grid.prod(dim=-1).tolist()
        features = pad_sequence(list(hidden.split(lengths)), batch_first=True)
        return VisualFeatures(features=features, lengths=lengths, group=tower.spatial_merge_size**2)

    def project(
        self, model: nn.Module, visual: VisualFeatures, projector: nn.Module | None = None
    ) -> list[torch.Tensor]:
        merged = (projector or self.projector(model))(visual.features[visual.valid()])
        return list(merged.split(visual.slots))

    def patch_pixels(self, batch: dict, visual: VisualFeatures) -> torch.Tensor:
        """The processor's flattened patches (3 x temporal x p x p values each), split per image and padded."""
        return pad_sequence(list(batch["pixel_values"].split(visual.lengths)), batch_first=True)

    def vision_attentions(self, model: nn.Module) -> list[nn.Module]:
        return [block.attn for block in self.vision_tower(model).blocks]

    def feature_block(self, model: nn.Module) -> int:
        return len(self.vision_attentions(model)) - 1  # the last block, before the merger

    def attention_positions(
        self, model: nn.Module, batch: dict, visual: VisualFeatures, chunks: list[int]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The blocks see every image's patches in merge-window order (Qwen2.5-VL: windows permuted too)."""
        grid = batch["image_grid_thw"]
        if (grid[:, 0] != 1).any():
            raise ValueError("ViT attention maps are drawn for still images (image_grid_thw with t = 1)")
        merge = self.vision_tower(model).spatial_merge_size
        device = visual.features.device
        # The family's own reordering of the last block's states, applied to their sequence positions.
        order = torch.arange(sum(chunks), device=device, dtype=torch.float64)[:, None]
        position = self.merge_window_order(model, order, grid)[:, 0].long()
        features, grids, start = [], [], 0
        for _, height, width in grid.tolist():
            features.append(position[start : start + height * width])
            grids.append(position[start + merge_window_cells(height, width, merge).to(device)])
            start += height * width
        return features, grids

    def seen_images(self, batch: dict, processor) -> list[torch.Tensor]:
        """The processor's flattened patches put back on each image's grid (first temporal frame)."""
        image_processor = processor.image_processor
        merge = image_processor.merge_size
        side, pixels, images, start = image_processor.patch_size, batch["pixel_values"].float().cpu(), [], 0
        for _, height, width in batch["image_grid_thw"].tolist():
            patches = pixels[start : start + height * width].view(height * width, 3, -1, side, side)[:, :, 0]
            placed = patches[merge_window_cells(height, width, merge).flatten()]  # raster order
            images.append(
                placed.view(height, width, 3, side, side).permute(2, 0, 3, 1, 4).reshape(3, height * side, width * side)
            )
            start += height * width
        return unnormalise(images, image_processor)

    def image_inputs(self, batch: dict, images: list[int]) -> dict[str, torch.Tensor]:
        """Each image's `image_grid_thw`, from which `position_ids` numbers its block."""
        return {"image_grid_thw": batch["image_grid_thw"][images]}

    def position_ids(self, model: nn.Module, batch: dict) -> torch.Tensor:
        """[4, B, L]: text positions (what generate numbers) then the (t, h, w) M-RoPE ids of `get_rope_index`.

        Always explicit: with `inputs_embeds` alone transformers cannot rebuild them (and would reuse the
        `rope_deltas` of an earlier generate call).
        """
        input_ids, mask = batch["input_ids"], batch["attention_mask"]
        text = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
        if batch.get("image_grid_thw") is None:
            return text[None].expand(4, -1, -1)
        mm_token_type_ids = (input_ids == self.image_token_id(model)).int()
        rope, _ = model.model.get_rope_index(
            input_ids, mm_token_type_ids, image_grid_thw=batch["image_grid_thw"], attention_mask=mask
        )
        return torch.cat([text[None], rope.to(text.device)])


def merge_window_cells(height: int, width: int, merge: int) -> torch.Tensor:
    """[height, width]: the index, in Qwen's processor order, of the patch in each grid cell.

    The processor orders patches (h / m, w / m, m, m): merge window by window, each window row by row.
    """
    patches = torch.arange(height * width)
    window, inner = patches // (merge * merge), patches % (merge * merge)
    rows = (window // (width // merge)) * merge + inner // merge
    cols = (window % (width // merge)) * merge + inner % merge
    cells = torch.empty(height, width, dtype=torch.long)
    cells[rows, cols] = patches
    return cells
