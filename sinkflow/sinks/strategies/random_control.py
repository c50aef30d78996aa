"""`random_control`: the control the paper lacks — act on as many random non-sink patches as there are sinks.

With `action: drop` it is the control for `drop_sinks` (is losing *those* tokens special, or would losing any
equally many hurt as much?); with `action: keep` the control for `sinks_only`. The random patches of an image
depend only on `seed` and the image's key (its sample id), so a result is reproducible and identical whether the
image is evaluated alone or in any batch. Sinks are never picked; when an image has more sinks than other
patches, all of its other patches are picked.
"""

from __future__ import annotations

import zlib
from typing import Literal

import torch

from sinkflow.checks import choice, number
from sinkflow.pathway import PositionIds, VisualFeatures
from sinkflow.sinks.strategies.base import SinkStrategy, split_sinks

Action = Literal["drop", "keep"]


class RandomControl(SinkStrategy, name="random_control"):
    """Drop (or keep only) `n_sinks` random non-sink patches per image; the rest stay in raster order."""

    def __init__(self, action: Action = "drop", seed: int = 0, position_ids: PositionIds = "contiguous"):
        super().__init__(position_ids)
        choice("sink_strategy.strategy.action", action, Action)
        number("sink_strategy.strategy.seed", seed, integer=True, at_least=0)
        self.action, self.seed = action, seed

    def picked(self, visual: VisualFeatures, sink_mask: torch.Tensor) -> list[torch.Tensor]:
        """Per image, the random non-sink patch indices (sorted)."""
        keys = visual.keys or [str(i) for i in range(len(sink_mask))]
        chosen = []
        for key, (sinks, others) in zip(keys, split_sinks(visual, sink_mask)):
            generator = torch.Generator().manual_seed(zlib.crc32(f"{self.seed}:{key}".encode()))
            order = torch.randperm(len(others), generator=generator).to(others.device)
            chosen.append(others[order[: len(sinks)]].sort().values)
        return chosen

    def select(self, visual: VisualFeatures, sink_mask: torch.Tensor | None) -> list[torch.Tensor]:
        selected = []
        for picked, n_tokens in zip(self.picked(visual, sink_mask), visual.slots):
            if self.action == "keep":
                selected.append(picked)
            else:
                keep = torch.ones(n_tokens, dtype=torch.bool, device=picked.device)
                keep[picked] = False
                selected.append(keep.nonzero().squeeze(1))
        return selected
