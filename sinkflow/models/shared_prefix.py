"""Prompts that begin alike are prefilled once: a deciding strategy's routing rows, and the answer pass after them.

A strategy that asks the model before routing (cot_route) prefills routing prompts, then the answer prompts, and
they begin alike: the template's system text, the user turn's opening, and the image block (in the answer pass up to
where the route cuts it: all of it for `both`, the sinks for `sinks_only`, nothing for `others_only`). Under causal
attention a token's keys and values depend only on the tokens before it and on its position, and every pass numbers
positions from each row's first real token, so those keys and values are the same wherever the tokens recur:
- the routing rows that ask about one image (its type, a question's scope) share one prefill of its prefix
  (`prefill_once`);
- the answer pass takes the prefix it shares with the routing pass from that pass's cache (`reuse_prefix`).
Each then prefills only the rest of each row.

The shared length is measured, not assumed: per row, the number of leading embeddings equal to those of an earlier
row about the same image; the batch shares the shortest. Reuse applies where the language model reads only
embeddings and a 2-D mask (positions follow the mask) and every cache layer is a plain `DynamicLayer`: families that
pass M-RoPE positions, token types or DeepStack features, or models with sliding-window layers, prefill in full.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

# The LLM inputs whose rows can be cut at a shared prefix: embeddings, and a mask the positions are derived from.
_REUSABLE_INPUTS = {"inputs_embeds", "attention_mask"}


@dataclass
class RoutingPrompts:
    """A generation's prompts and the key/value cache it filled, column for column (padding may sit anywhere, the
    mask says where); `images[k]` is the batch image row k asked about."""

    embeds: torch.Tensor  # [R, L, D]
    mask: torch.Tensor  # [R, L]
    images: list[int]
    cache: DynamicCache


def one_image_per_row(image_samples: list[int], n_rows: int) -> list[int] | None:
    """Per batch row, the index of the one image it shows (`image_samples[i]`: image i's row); None when some row
    shows none or several."""
    return list(range(n_rows)) if list(image_samples) == list(range(n_rows)) else None


def shared_prefix(a: torch.Tensor, b: torch.Tensor) -> int:
    """How many leading rows of `a` [n, D] and `b` [m, D] are exactly equal."""
    n = min(len(a), len(b))
    equal = (a[:n] == b[:n]).all(-1)
    return int(equal.long().cumprod(0).sum())


def reuse_prefix(
    inputs: dict[str, torch.Tensor], row_images: list[int] | None, asked: RoutingPrompts
) -> tuple[dict[str, torch.Tensor], DynamicCache] | None:
    """`inputs` (left-padded rows; row r shows the batch's image `row_images[r]`) cut after the prefix every row
    shares with a row of `asked` about its image, and the cache holding that prefix; None when nothing can be reused
    (see the module docstring).

    The cut rows keep the full width generation expects: the prefix's columns (generation does not read them again:
    the cache stands for them), then each row's remaining tokens left-padded, so padding sits between prefix and rest
    and the mask skips it; positions, counted along the mask, are those of the uncut rows."""
    if row_images is None or set(inputs) - _REUSABLE_INPUTS:
        return None
    if not asked.cache.layers or any(type(layer) is not DynamicLayer for layer in asked.cache.layers):
        return None
    embeds, mask = inputs["inputs_embeds"], inputs["attention_mask"].bool()
    asked_mask = asked.mask.bool()
    last_row = {image: k for k, image in enumerate(asked.images)}  # any routing row about the image would do
    if any(image not in last_row for image in row_images):
        return None
    sources = [last_row[image] for image in row_images]
    rows = [embeds[r][mask[r]] for r in range(len(row_images))]
    # At least one token left to prefill: its logits give the first answer token.
    lengths = [min(shared_prefix(row, asked.embeds[k][asked_mask[k]]), len(row) - 1) for row, k in zip(rows, sources)]
    prefix = min(lengths)
    if prefix < 1:
        return None
    # The cache columns of each source row's first `prefix` real tokens (padding may sit anywhere in `asked`).
    columns = torch.stack([asked_mask[k].nonzero().squeeze(1)[:prefix] for k in sources])  # [B, prefix]
    layers = []
    for layer in asked.cache.layers:
        index = columns[:, None, :, None].to(layer.keys.device)
        index = index.expand(-1, layer.keys.shape[1], -1, layer.keys.shape[-1])
        keys, values = layer.keys[sources], layer.values[sources]
        layers.append((keys.gather(2, index), values.gather(2, index)))
    width = max(len(row) for row in rows) - prefix
    cut_embeds = embeds.new_zeros(len(rows), prefix + width, embeds.shape[-1])
    cut_mask = inputs["attention_mask"].new_zeros(len(rows), prefix + width)
    for r, row in enumerate(rows):
        rest = len(row) - prefix
        cut_embeds[r, :prefix], cut_embeds[r, prefix + width - rest :] = row[:prefix], row[prefix:]
        cut_mask[r, :prefix] = cut_mask[r, prefix + width - rest :] = 1
    return {"inputs_embeds": cut_embeds, "attention_mask": cut_mask}, DynamicCache(layers)


def prefill_once(
    model: torch.nn.Module, inputs: dict[str, torch.Tensor], images: list[int]
) -> tuple[dict[str, torch.Tensor], DynamicCache] | None:
    """Rows of `inputs` (left-padded; row k asks about the batch's image `images[k]`) that ask about the same image
    share their prompt up to where their questions part: that prefix is prefilled once per image by `model`, and
    the rows are cut after it as `reuse_prefix` cuts them; None when no image is asked about twice, or nothing can
    be reused."""
    if len(set(images)) == len(images) or set(inputs) - _REUSABLE_INPUTS:
        return None
    embeds, mask = inputs["inputs_embeds"], inputs["attention_mask"].bool()
    first = {image: k for k, image in reversed(list(enumerate(images)))}
    rows = [embeds[k][mask[k]] for k in range(len(images))]
    shared = [
        len(rows[k]) - 1 if first[image] == k else shared_prefix(rows[k], rows[first[image]])
        for k, image in enumerate(images)
    ]
    prefix = min(shared)
    if prefix < 1:
        return None
    once = list(first.values())
    prefixes = torch.stack([rows[k][:prefix] for k in once])
    ones = inputs["attention_mask"].new_ones(prefixes.shape[:2])
    cache = model(inputs_embeds=prefixes, attention_mask=ones, use_cache=True, logits_to_keep=1).past_key_values
    return reuse_prefix(inputs, images, RoutingPrompts(prefixes, ones, list(first), cache))
