"""The visual pathway's data, shared by families (below them) and strategies (beside them): the leaf of the package.

pixels --family.encode--> VisualFeatures --detector--> sink mask --strategy--> Routed --family.merge--> LLM inputs

It imports only torch, so every layer above can depend on it (docs/architecture.md#layers).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import torch

# Label of a token the loss ignores (transformers' and torch's cross-entropy default).
IGNORE_INDEX = -100
# How routed visual tokens are numbered: consecutively in their new order, or at their source slot's position.
PositionIds = Literal["contiguous", "original"]
PaddingSide = Literal["left", "right"]


@dataclass
class VisualFeatures:
    """Per-patch projector-input features of the images in a batch, in the order the projector consumes them.

    Images may have different patch counts (Qwen's dynamic resolution): rows are zero-padded to the longest and
    `lengths` gives each image's patches. `group` consecutive patches form one LLM token (1 for LLaVA, the 2x2
    merge window = 4 for Qwen); strategies route LLM tokens.
    """

    features: torch.Tensor  # [n_images, N, D], zero-padded after each image's `lengths[i]` patches
    lengths: list[int] = field(default_factory=list)  # patches per image; empty when constructed: every image has N
    group: int = 1
    planted: torch.Tensor | None = None  # [n_images, N] bool: simulated sinks (ground truth), when planted
    keys: list[str] = field(default_factory=list)  # one stable id per image (seeds per-image random choices)
    questions: list[str] = field(default_factory=list)  # the question asked about each image (routers read it)
    # Per image [lengths[i]] long: the ViT tile (crop, thumbnail, base view) each patch came from, for families that
    # cut an image into tiles; empty: every image is one tile. Sinks are detected and counted per tile, routed per
    # image. A group of patches (one LLM token) never spans two tiles.
    tiles: list[torch.Tensor] = field(default_factory=list)
    # Per image [block_i] bool: the image's placeholder block, True where a visual token (one of `slots`) goes and
    # False where a fixed token goes (LLaVA-NeXT's row-end `image_newline`), which is never routed nor counted.
    # Empty: the block is the visual tokens alone.
    layouts: list[torch.Tensor] = field(default_factory=list)
    # Family-private tensors that travel with the features (Qwen3-VL's DeepStack states), keyed by name.
    extras: dict[str, object] = field(default_factory=dict)
    # Per image, the sizes of the separate placeholder runs its block is split into, in block order (Idefics3: one run
    # per crop, the crop's text tags between runs); empty: one run per image. A token never leaves its run (`by_run`).
    runs: list[list[int]] = field(default_factory=list)
    # When a strategy asks for them (`SinkStrategy.needs_vit_attention`): per patch, the attention it receives in the
    # ViT block the projector reads, summed over heads ([n_images, N]: from CLS where the tower has one, else the mean
    # over its sequence's queries), and its key there averaged over heads ([n_images, N, d]); zero-padded.
    attention_received: torch.Tensor | None = None
    attention_keys: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if not self.lengths:
            self.lengths = [self.features.shape[1]] * self.features.shape[0]

    @property
    def slots(self) -> list[int]:
        """LLM tokens (image placeholder tokens) per image."""
        return [n // self.group for n in self.lengths]

    def valid(self) -> torch.Tensor:
        """[n_images, N] bool: real (not padding) patches."""
        positions = torch.arange(self.features.shape[1], device=self.features.device)
        return positions < torch.tensor(self.lengths, device=self.features.device)[:, None]

    def to_tokens(self, patch_mask: torch.Tensor) -> torch.Tensor:
        """A patch mask [n_images, N] -> LLM-token mask [n_images, N // group]: a token is set if any patch is."""
        return patch_mask.view(patch_mask.shape[0], -1, self.group).any(dim=-1)

    def token_features(self) -> torch.Tensor:
        """[n_images, N // group, group * D]: each LLM token's patches side by side."""
        n_images, n_patches, dim = self.features.shape
        return self.features.reshape(n_images, n_patches // self.group, self.group * dim)

    @property
    def blocks(self) -> list[int]:
        """Placeholder tokens per image: its visual tokens and, with a layout, its fixed tokens."""
        return [len(layout) for layout in self.layouts] if self.layouts else self.slots

    def detect(self, detector: Callable[[torch.Tensor, list[int]], torch.Tensor], own_norm: bool = False):
        """The LLM-token sink mask [n_images, N // group]: `detector(features, lengths)` run on every tile's patches
        (a token is a sink if any of its patches is), or with `own_norm` on every tile's tokens, each judged by the
        norm of its patches side by side."""
        if own_norm:
            return self.from_tiles(detector(*self.by_tile(self.token_features(), tokens=True)), tokens=True)
        return self.to_tokens(self.patch_sinks(detector))

    def patch_sinks(self, detector: Callable[[torch.Tensor, list[int]], torch.Tensor]) -> torch.Tensor:
        """The patch sink mask [n_images, N]: `detector(features, lengths)` run on every tile's patches."""
        return self.from_tiles(detector(*self.by_tile(self.features)))

    def tile_keys(self) -> list[str]:
        """One key per tile, in `by_tile` order: an image's own key when it is one tile, else `key@t`."""
        if not self.tiles:
            return list(self.keys)
        return [
            key if len(ids.unique()) == 1 else f"{key}@{t}"
            for key, ids in zip(self.keys, self.tiles)
            for t in ids.unique().tolist()
        ]

    def by_tile(self, values: torch.Tensor, tokens: bool = False) -> tuple[torch.Tensor, list[int]]:
        """Per-image rows [n_images, N (or N // group with `tokens`), ...] -> per-tile rows [n_tiles, T, ...],
        zero-padded, and each tile's length. Without tiles, the rows and lengths as they are."""
        lengths = self.slots if tokens else self.lengths
        if not self.tiles:
            return values, list(lengths)
        rows = [values[i, : lengths[i]][ids == t] for i, ids in enumerate(self._tile_ids(tokens)) for t in ids.unique()]
        return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True), [len(row) for row in rows]

    def from_tiles(self, rows: torch.Tensor, tokens: bool = False) -> torch.Tensor:
        """The inverse of `by_tile`: per-tile rows back to per-image rows [n_images, width, ...], zero after each
        image's length."""
        if not self.tiles:
            return rows
        width = self.features.shape[1] // (self.group if tokens else 1)
        out = rows.new_zeros(len(self.lengths), width, *rows.shape[2:])
        tile = 0
        for i, ids in enumerate(self._tile_ids(tokens)):
            for t in ids.unique():
                where = (ids == t).nonzero().squeeze(1)
                out[i, where] = rows[tile, : len(where)]
                tile += 1
        return out

    def _tile_ids(self, tokens: bool) -> list[torch.Tensor]:
        """Per image, the tile of each patch, or of each token (its first patch's) with `tokens`."""
        return [ids[:: self.group] for ids in self.tiles] if tokens else self.tiles

    def select(self, images: Sequence[int], extras: dict[str, object] | None = None) -> VisualFeatures:
        """The features of the images at `images` (indices into this batch's images, repeats allowed), in that
        order: what a batch showing those images merges with (cot_route asks two questions of every image in one
        batch). `extras` are family-private, so the family selects them (`VisualFamily.select_images`): features
        that carry extras are refused without them rather than carried along unselected."""
        if self.extras and extras is None:
            raise ValueError(
                f"these features carry family extras {sorted(self.extras)}: select them with the family "
                "(VisualFamily.select_images)"
            )
        index = check_selection(images, len(self.lengths))
        rows = torch.tensor(index, dtype=torch.long, device=self.features.device)

        def pick(values: list) -> list:
            return [values[i] for i in index] if values else []

        return VisualFeatures(
            features=self.features[rows],
            lengths=pick(self.lengths),
            group=self.group,
            planted=None if self.planted is None else self.planted[rows],
            keys=pick(self.keys),
            questions=pick(self.questions),
            tiles=pick(self.tiles),
            layouts=pick(self.layouts),
            extras=extras or {},
            runs=pick(self.runs),
            attention_received=None if self.attention_received is None else self.attention_received[rows],
            attention_keys=None if self.attention_keys is None else self.attention_keys[rows],
        )


def check_selection(images: Sequence[int], n_images: int) -> list[int]:
    """`images` as a list of indices, each checked to name one of the batch's `n_images` images."""
    index = [int(i) for i in images]
    outside = [i for i in index if not 0 <= i < n_images]
    if outside:
        raise IndexError(f"image indices {outside} name no image of a batch of {n_images}")
    return index


@dataclass
class Routed:
    """A strategy's output: the LLM tokens of each image and where each came from."""

    tokens: list[torch.Tensor]  # per image [n_i, D_llm]
    sources: list[torch.Tensor]  # per image [n_i] long: the LLM-token index (slot of the image block) of each
    position_ids: PositionIds = "contiguous"  # "original": moved tokens keep their slot's position (rebuild_rows)
    decisions: list[dict] | None = None  # per image, what a deciding strategy chose (written to the predictions)
    decision_seconds: float = 0.0  # time spent deciding before the answer pass (cot_route's routing generation)

    def select(self, images: Sequence[int]) -> Routed:
        """The routed tokens of the images at `images` (repeats allowed), in that order (see `VisualFeatures.select`);
        decisions follow their images."""
        index = check_selection(images, len(self.tokens))
        return replace(
            self,
            tokens=[self.tokens[i] for i in index],
            sources=[self.sources[i] for i in index],
            decisions=None if self.decisions is None else [self.decisions[i] for i in index],
        )


@dataclass
class LlmColumns:
    """Which columns of the LLM input rows hold what: tokens (not padding), image-block tokens, visual tokens among
    them (not a layout's fixed tokens), and the ViT sinks among those (when the detector ran), [B, L] bool each; and
    `answer_start` [B],
    the column of each row's first answer token: its first supervised one when the rows carry labels, else the
    column after the prompt. An intervention inside the LLM reads them (`sinkflow.interventions`)."""

    tokens: torch.Tensor
    image: torch.Tensor
    visual: torch.Tensor
    sinks: torch.Tensor | None
    answer_start: torch.Tensor

    @classmethod
    def of(cls, inputs: dict[str, torch.Tensor], image, visual, sinks) -> LlmColumns:
        """The columns of LLM `inputs` (their mask, and labels when training) with these flags."""
        labels = inputs.get("labels")
        length = image.shape[1]
        if labels is None:
            start = torch.full((image.shape[0],), length, device=image.device)
        else:
            supervised = labels != IGNORE_INDEX
            start = torch.where(supervised.any(1), supervised.long().argmax(1), length).to(image.device)
        return cls(inputs["attention_mask"].bool().to(image.device), image, visual, sinks, start)


@dataclass
class PathwayResult:
    """What one pass through the pathway produced: the LLM inputs and, when the batch had images, what was seen."""

    inputs: dict[str, torch.Tensor]  # inputs_embeds, attention_mask, [labels], [position_ids]
    visual: VisualFeatures | None = None
    sinks: torch.Tensor | None = None  # [n_images, N // group] bool, when the detector ran
    routed: Routed | None = None
    columns: LlmColumns | None = None  # where the image, visual and sink tokens sit in the LLM input rows


# ask(questions, images, routed, max_new_tokens, answers) -> the model's greedy answers to questions[k] about the
# batch's image images[k] (repeats allowed), all in one generation, the images entering the LLM as `routed` says; each
# answer at most `max_new_tokens` tokens, or with None as many as the longest of the expected `answers` takes as the
# model's tokenizer writes it (SinkflowModule provides it; cot_route uses it).
Ask = Callable[[list[str], list[int], Routed, int | None, Sequence[str]], list[str]]
# project(visual) -> every image's LLM tokens [slots_i, D_llm] through the family's projector.
Project = Callable[[VisualFeatures], list[torch.Tensor]]


def with_fixed(routed: Routed, layouts: list[torch.Tensor], fixed: list[torch.Tensor]) -> Routed:
    """`routed` (visual tokens per image) laid out in each image's block with its fixed tokens (`fixed[i]`
    [n_fixed_i, D], in block order): sources become block slots.

    Fixed tokens never move: routed tokens refill the block's visual slots in their routed order, like text reflowed
    into the image's rows. A strategy that keeps fewer tokens leaves a shorter block, cut after its last routed token
    and the fixed tokens right after it (a full row keeps its newline).
    """
    tokens, sources = [], []
    for image, (layout, image_fixed) in enumerate(zip(layouts, fixed)):
        layout = layout.to(routed.tokens[image].device)
        visual_slots = layout.nonzero().squeeze(1)
        n = len(routed.tokens[image])
        if n > len(visual_slots):
            raise ValueError(f"image {image}: {n} routed tokens for {len(visual_slots)} visual slots")
        end = int(visual_slots[n - 1]) + 1 if n else 0
        while 0 < end < len(layout) and not layout[end]:
            end += 1
        block = layout[:end]
        fixed_slots = (~block).nonzero().squeeze(1)
        embeds = routed.tokens[image].new_empty(end, routed.tokens[image].shape[-1])
        embeds[visual_slots[:n]] = routed.tokens[image]
        embeds[fixed_slots] = image_fixed[: len(fixed_slots)].to(embeds.dtype)
        placed = torch.arange(end, device=layout.device)
        placed[visual_slots[:n]] = visual_slots[routed.sources[image].to(layout.device)]
        tokens.append(embeds)
        sources.append(placed)
    return replace(routed, tokens=tokens, sources=sources)


def by_run(routed: Routed, runs: list[list[int]]) -> tuple[Routed, list[int]]:
    """`routed` (per image, sources in block slots) as one entry per placeholder run, and each run's size.

    A run receives, in routed order, the routed tokens whose source slot lies in it, their sources counted from the
    run's first slot: the image is routed as a whole (one decision, one order) and each run keeps its own tokens, so
    text between runs (Idefics3's `<row_i_col_j>` crop tags) still introduces the tokens of its crop.
    """
    tokens, sources, sizes = [], [], []
    for image_tokens, image_sources, image_runs in zip(routed.tokens, routed.sources, runs):
        start = 0
        for size in image_runs:
            inside = (image_sources >= start) & (image_sources < start + size)
            tokens.append(image_tokens[inside])
            sources.append(image_sources[inside] - start)
            sizes.append(size)
            start += size
    return replace(routed, tokens=tokens, sources=sources, decisions=None), sizes


def rebuild_rows(
    inputs: dict[str, torch.Tensor],
    placeholders: torch.Tensor,
    slots: list[int],
    routed: Routed,
    padding_side: PaddingSide,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Rows with each image block replaced by its routed tokens, re-padded to a common length on `padding_side`.

    Labels stay aligned (IGNORE_INDEX on visual tokens). A visual token's position is that of the block slot it came
    from (`original`) or of the block slot it now fills (`contiguous`); text keeps its position. Positions are passed
    on when the inputs carry them (M-RoPE) or `original` asks for them; otherwise transformers numbers the rebuilt
    rows consecutively. Also returns the rebuilt rows' image-token columns [B, L'] (bool).
    """
    embeds, mask, labels = inputs["inputs_embeds"], inputs["attention_mask"], inputs.get("labels")
    given = inputs.get("position_ids")
    tokens = [t.to(embeds.device, embeds.dtype) for t in routed.tokens]
    # Positions of the unrouted sequence as [P, B, L]; 1-D ones count from each row's first real token.
    positions = given if given is not None else (mask.long().cumsum(-1) - 1).clamp_min(0)[None]
    rows: list[_Row] = []
    image = 0
    for r in range(embeds.shape[0]):
        columns = placeholders[r].nonzero().squeeze(1).tolist()
        row = _Row(embeds[r], mask[r], labels[r] if labels is not None else None, positions[:, r])
        start, used = 0, 0
        while used < len(columns):
            first, n = columns[used], slots[image]
            if columns[used + n - 1] != first + n - 1:
                raise ValueError(f"row {r}: the placeholders of image {image} are not contiguous")
            row.take_text(start, first)
            sources = routed.sources[image].to(embeds.device)
            taken = sources if routed.position_ids == "original" else torch.arange(len(sources), device=embeds.device)
            row.add_visual(tokens[image], first + taken)
            start, used, image = first + n, used + n, image + 1
        row.take_text(start, embeds.shape[1])
        rows.append(row)
    finished = [row.finish() for row in rows]
    length = max(len(row["mask"]) for row in finished)
    out = {
        "inputs_embeds": torch.stack([_pad(row["embeds"], length, 0.0, padding_side) for row in finished]),
        "attention_mask": torch.stack([_pad(row["mask"], length, 0, padding_side) for row in finished]),
    }
    image_columns = torch.stack([_pad(row["visual"], length, False, padding_side) for row in finished])
    if labels is not None:
        out["labels"] = torch.stack([_pad(row["labels"], length, IGNORE_INDEX, padding_side) for row in finished])
    if given is not None or routed.position_ids == "original":
        stacked = torch.stack([_pad(row["positions"].T, length, 0, padding_side).T for row in finished], dim=1)
        out["position_ids"] = stacked if given is not None else stacked[0]
    return out, image_columns


class _Row:
    """One row being rebuilt: text spans copied from the unrouted row, image blocks replaced by routed tokens."""

    def __init__(self, embeds: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor | None, positions: torch.Tensor):
        self.source = embeds, mask, labels, positions  # positions: [P, L]
        self.parts: dict[str, list[torch.Tensor]] = {
            "embeds": [],
            "mask": [],
            "labels": [],
            "positions": [],
            "visual": [],
        }

    def take_text(self, start: int, end: int) -> None:
        """Append the unrouted columns [start, end)."""
        embeds, mask, labels, positions = self.source
        self.parts["embeds"].append(embeds[start:end])
        self.parts["mask"].append(mask[start:end])
        self.parts["labels"].append(
            labels[start:end] if labels is not None else torch.full((end - start,), IGNORE_INDEX, device=embeds.device)
        )
        self.parts["positions"].append(positions[:, start:end])
        self.parts["visual"].append(torch.zeros(end - start, dtype=torch.bool, device=embeds.device))

    def add_visual(self, tokens: torch.Tensor, columns: torch.Tensor) -> None:
        """Append routed tokens that take the positions of the unrouted `columns`."""
        embeds, mask, _, positions = self.source
        self.parts["embeds"].append(tokens)
        self.parts["mask"].append(mask.new_ones(len(tokens)))
        self.parts["labels"].append(torch.full((len(tokens),), IGNORE_INDEX, device=embeds.device))
        self.parts["positions"].append(positions[:, columns])
        self.parts["visual"].append(torch.ones(len(tokens), dtype=torch.bool, device=embeds.device))

    def finish(self) -> dict[str, torch.Tensor]:
        return {k: torch.cat(v, dim=-1 if k == "positions" else 0) for k, v in self.parts.items()}


def _pad(values: torch.Tensor, length: int, fill: float, side: PaddingSide) -> torch.Tensor:
    """Pad a row's first dimension to `length` with `fill` on `side`."""
    extra = length - values.shape[0]
    if extra == 0:
        return values
    pad = torch.full((extra, *values.shape[1:]), fill, dtype=values.dtype, device=values.device)
    return torch.cat([pad, values] if side == "left" else [values, pad])
