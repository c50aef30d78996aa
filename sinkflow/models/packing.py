"""Padding-free packing (`dataset.packing=true`): a training batch's samples, once merged into LLM inputs, share rows.

After the pathway (each image encoded, its sinks detected and its tokens routed exactly as without packing), the
rows' real tokens are packed first-fit-decreasing into as few rows of `capacity` tokens (`dataset.max_length`; the
longest sample's length when that is longer, or when none is set) as hold them, then balanced across those rows
(`bins`); no sample is split. Inside a row each sample keeps its own positions, counted from 0 (Qwen-VL's M-RoPE ids as
`get_rope_index` gave them for the sample, its text row counting from 0), and attends only to itself:
transformers finds where packed samples start from positions that stop counting up by one (its packed-sequence
mask with SDPA or eager attention; flash-attention's variable-length path on a GPU), so no attention mask is passed.
A sample's first label is ignored, so no token learns to predict the next sample; with the mean over supervised
tokens, the loss and its gradients are those of the unpacked batch.
"""

from __future__ import annotations

import torch

from sinkflow.pathway import IGNORE_INDEX

# LLM inputs packing knows how to lay out (any other would be passed on wrong): the merged ones, Gemma 3's image
# token types and Qwen3-VL's DeepStack features.
PACKED_KEYS = {"inputs_embeds", "attention_mask", "labels", "position_ids", "token_type_ids", "mm_encoder_outputs"}


def bins(lengths: list[int], capacity: int | None = None) -> list[list[int]]:
    """Rows of sample indices: as few as first-fit decreasing (ties in sample order) needs with rows of `capacity`
    tokens (the longest sample's when that is longer or `capacity` is None), then balanced: packed again into the
    narrowest rows that still need no more rows, so the last row is not left half empty."""
    longest = max(lengths)
    wide = _first_fit(lengths, max(longest, capacity or 0))
    low, high = max(longest, -(-sum(lengths) // len(wide))), max(longest, capacity or 0)
    while low < high:  # the narrowest width first-fit packs into as many rows (checked, not assumed, monotonic)
        middle = (low + high) // 2
        if len(_first_fit(lengths, middle)) <= len(wide):
            high = middle
        else:
            low = middle + 1
    narrow = _first_fit(lengths, high)
    return narrow if len(narrow) <= len(wide) else wide


def _first_fit(lengths: list[int], capacity: int) -> list[list[int]]:
    rows: list[list[int]] = []
    room: list[int] = []
    for sample in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        row = next((r for r, free in enumerate(room) if free >= lengths[sample]), None)
        if row is None:
            rows.append([]), room.append(capacity)
            row = len(rows) - 1
        rows[row].append(sample)
        room[row] -= lengths[sample]
    return rows


def pack(inputs: dict, capacity: int | None = None) -> dict:
    """The merged, right-padded LLM inputs of a training batch with its samples packed into rows (see the module
    docstring); `attention_mask` is left out, `position_ids` always given, `use_cache` off."""
    unknown = set(inputs) - PACKED_KEYS
    if unknown:
        raise ValueError(f"dataset.packing=true cannot lay out the LLM inputs {sorted(unknown)}")
    mask = inputs["attention_mask"].bool()
    lengths = mask.sum(1)
    if not torch.equal(mask, torch.arange(mask.shape[1], device=mask.device)[None] < lengths[:, None]):
        raise ValueError("dataset.packing=true packs right-padded rows (training batches); these are padded left")
    rows = bins(lengths.tolist(), capacity)
    device = mask.device
    width = max(sum(int(lengths[i]) for i in row) for row in rows)
    # Per packed column: the sample (row of the batch) and column it comes from, and its place within the sample.
    source = torch.zeros(len(rows), width, dtype=torch.long, device=device)
    column = torch.zeros_like(source)
    offset = torch.zeros_like(source)
    valid = torch.zeros(len(rows), width, dtype=torch.bool, device=device)
    for r, samples in enumerate(rows):
        start = 0
        for sample in samples:
            n = int(lengths[sample])
            source[r, start : start + n] = sample
            column[r, start : start + n] = torch.arange(n, device=device)
            offset[r, start : start + n] = torch.arange(n, device=device)
            start += n
        valid[r, :start] = True
        offset[r, start:] = torch.arange(width - start, device=device)  # the padding: a sequence of its own
    # No cache: transformers looks for packed samples only in a forward without one (Idefics3 would make one).
    packed = {"inputs_embeds": inputs["inputs_embeds"][source, column] * valid[..., None], "use_cache": False}
    if "labels" in inputs:
        labels = inputs["labels"][source, column]
        labels[~valid | (offset == 0)] = IGNORE_INDEX  # padding, and each sample's first token
        packed["labels"] = labels
    packed["position_ids"] = _positions(inputs.get("position_ids"), source, column, offset, valid)
    if "token_type_ids" in inputs:
        packed["token_type_ids"] = inputs["token_type_ids"][source, column] * valid
    if "mm_encoder_outputs" in inputs:
        packed["mm_encoder_outputs"] = _encoder_outputs(inputs["mm_encoder_outputs"], source, column, valid)
    return packed


def _positions(given: torch.Tensor | None, source, column, offset, valid) -> torch.Tensor:
    """The packed rows' position ids: each sample's own, counting from 0 (a row's padding: a sequence of its own)."""
    if given is None:  # 1-D positions transformers would count from the mask: the place within the sample
        return offset
    if given.dim() == 2:  # routed positions ("original"): they also tell transformers where samples start
        own = torch.where(valid, given[source, column], offset)
        if not torch.equal(own.diff(dim=1) == 1, offset.diff(dim=1) == 1):
            raise ValueError(
                "dataset.packing=true needs each sample's positions to count up by one (transformers reads where "
                "packed samples start from them): route with sink_strategy.strategy.position_ids=contiguous"
            )
        return own
    packed = given[:, source, column]  # [P, rows, width]: M-RoPE ids as the sample had them
    packed[0] = offset  # the text positions, from which transformers finds the samples
    return packed


def _encoder_outputs(outputs: dict, source, column, valid) -> dict:
    """A family's extra multimodal inputs (Qwen3-VL's DeepStack features), each laid out by its own `packed`."""
    unknown = [key for key, value in outputs.items() if not hasattr(value, "packed")]
    if unknown:
        raise ValueError(f"dataset.packing=true cannot lay out the multimodal encoder outputs {unknown}")
    return {key: value.packed(source, column, valid) for key, value in outputs.items()}
