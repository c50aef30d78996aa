"""The ViT's attention in one block, captured without changing the forward (`models.attention_patch`): the block's
queries and keys (after rotary embeddings, as the model uses them), laid end to end over the sequences it attends
within, and where each projector-input feature sits among them (`VisualFamily.attention_positions`). Relevance maps
(`analysis.relevance`) read one column of it; sink-aware pruning reads what each feature receives (`received`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from sinkflow.models.attention_patch import recording_attention
from sinkflow.pathway import VisualFeatures


def softmax_column(
    query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None, scaling: float | None, target: int
) -> torch.Tensor:
    """[heads, n]: the attention every query of one sequence ([heads, n, d]) pays to key `target`."""
    key = key.repeat_interleave(query.shape[0] // key.shape[0], 0)
    scores = (query.float() @ key.float().transpose(-1, -2)) * (query.shape[-1] ** -0.5 if scaling is None else scaling)
    if mask is not None:
        scores = scores.masked_fill(~mask, -torch.inf) if mask.dtype == torch.bool else scores + mask.float()
    return scores.softmax(dim=-1)[..., target]


@dataclass
class Captured:
    """One forward pass of the ViT: its projector-input features and the recorded layer's q / k.

    q / k are laid end to end over all images as one "global" sequence (per image for CLIP; in the order the
    tower ran its attention chunks for Qwen), `chunks` giving the [start, end) of each attention chunk.
    """

    visual: VisualFeatures
    query: torch.Tensor  # [heads, T, d]
    key: torch.Tensor
    chunks: list[tuple[int, int]]
    masks: list[torch.Tensor | None]
    scaling: float | None
    grids: list[torch.Tensor]  # per image [rows, cols]: global index of the patch in each grid cell
    feature_index: list[torch.Tensor]  # per image [n_features]: global index of each feature row

    def column(self, image: int, feature: int) -> torch.Tensor:
        """[heads, rows, cols]: attention paid by each patch of `image` to its feature `feature`."""
        target = int(self.feature_index[image][feature])
        full = self.query.new_zeros(self.query.shape[0], self.query.shape[1], dtype=torch.float32)
        for (start, end), mask in zip(self.chunks, self.masks):
            if start <= target < end:  # only queries in the target's chunk (image or window) can attend to it
                full[:, start:end] = softmax_column(
                    self.query[:, start:end], self.key[:, start:end], mask, self.scaling, target - start
                )
        return full[:, self.grids[image]]

    def cell(self, image: int, feature: int) -> tuple[int, int] | None:
        """(row, col) of a feature's patch on the grid; None for a token that is not a patch (CLS)."""
        hit = (self.grids[image] == self.feature_index[image][feature]).nonzero()
        return (int(hit[0, 0]), int(hit[0, 1])) if len(hit) else None

    def received(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per image: the attention each feature receives, summed over heads [n_features] (from the sequence's tokens
        that are not features, CLIP's CLS, when it has some; otherwise averaged over every query of its sequence),
        and each feature's key averaged over heads [n_features, d]."""
        scores = torch.zeros(self.query.shape[1])
        is_feature = torch.zeros(self.query.shape[1], dtype=torch.bool, device=self.query.device)
        is_feature[torch.cat(self.feature_index).to(self.query.device)] = True
        for (start, end), mask in zip(self.chunks, self.masks):
            query, key = self.query[:, start:end], self.key[:, start:end]
            key = key.repeat_interleave(query.shape[0] // key.shape[0], 0)
            scale = query.shape[-1] ** -0.5 if self.scaling is None else self.scaling
            logits = (query.float() @ key.float().transpose(-1, -2)) * scale
            if mask is not None:
                logits = logits.masked_fill(~mask, -torch.inf) if mask.dtype == torch.bool else logits + mask.float()
            weights = logits.softmax(dim=-1).sum(0)  # [n, n], summed over heads
            others = (~is_feature[start:end]).nonzero().squeeze(1)
            scores[start:end] = (weights[others] if len(others) else weights).mean(0).cpu()
        keys = self.key.float().mean(0).cpu()
        return (
            [scores[index.cpu()] for index in self.feature_index],
            [keys[index.cpu()] for index in self.feature_index],
        )


def capture(
    model: nn.Module,
    family,
    batch: dict,
    layer: int | None,
    setting: str = "relevance.layer",
    grad: bool = False,
    grids: bool = True,
) -> Captured:
    """Run the family's ViT on the batch recording block `layer`'s attention (None: the feature block; `setting`
    names it in errors); with `grad`, the features keep their graph (a ViT that trains); without `grids`, only where
    the features sit (`VisualFamily.feature_positions`), for families that cannot draw a patch grid."""
    attentions = family.vision_attentions(model)
    index = family.feature_block(model) if layer is None else layer
    if not -len(attentions) <= index < len(attentions):
        raise ValueError(f"{setting}={layer} is outside the ViT's {len(attentions)} blocks")
    calls = []
    with torch.set_grad_enabled(grad), recording_attention([attentions[index]], lambda *call: calls.append(call)):
        visual = family.encode(model, batch)
    # Every call's batch entries end to end: one call of all images (CLIP), or one per image / window (Qwen).
    queries = [q for query, _, _, _ in calls for q in query]
    keys = [k for _, key, _, _ in calls for k in key]
    masks = [
        None if mask is None else mask[b if mask.shape[0] > 1 else 0, 0]
        for query, _, mask, _ in calls
        for b in range(len(query))
    ]
    lengths = [q.shape[1] for q in queries]
    bounds = np.cumsum([0, *lengths]).tolist()
    if grids:
        feature_index, patch_grids = family.attention_positions(model, batch, visual, lengths)
    else:
        feature_index, patch_grids = family.feature_positions(model, batch, visual, lengths), []
    return Captured(
        visual=visual,
        query=torch.cat(queries, dim=1),
        key=torch.cat(keys, dim=1),
        chunks=list(zip(bounds[:-1], bounds[1:])),
        masks=masks,
        scaling=calls[0][3],
        grids=patch_grids,
        feature_index=feature_index,
    )


def with_attention(model: nn.Module, family, batch: dict, grad: bool) -> VisualFeatures:
    """The batch's features with what each patch receives in the feature block (`VisualFeatures.attention_received`,
    `attention_keys`)."""
    captured = capture(model, family, batch, None, grad=grad, grids=False)
    visual = captured.visual
    received, keys = captured.received()
    width, device = visual.features.shape[1], visual.features.device
    scores = torch.zeros(len(received), width, device=device)
    key_rows = torch.zeros(len(keys), width, keys[0].shape[-1], device=device)
    for i, (score, key) in enumerate(zip(received, keys)):
        scores[i, : len(score)], key_rows[i, : len(key)] = score.to(device), key.to(device)
    return replace(visual, attention_received=scores, attention_keys=key_rows)
