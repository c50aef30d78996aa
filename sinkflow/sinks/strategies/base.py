"""The strategy interface: which visual tokens reach the LLM, in what order, through which projector.

Strategies register by name (`class SinkFront(SinkStrategy, name="sink_front")`) so that tools and benchmarks can
enumerate them; `conf/sink_strategy/<name>.yaml` instantiates `<name>.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from sinkflow.sinks.detect import token_norms

if TYPE_CHECKING:
    from sinkflow.models.families.base import VisualFeatures

POSITION_MODES = ("contiguous", "original")
# ask(questions, routed, max_new_tokens) -> the model's greedy answers, one question per image, the images entering
# the LLM as `routed` says (SinkflowModule provides it; cot_route uses it).
Ask = Callable[[list[str], "Routed", int], list[str]]
SINK_ORDERS = ("raster", "norm")


@dataclass
class Routed:
    """A strategy's output: the LLM tokens of each image and where each came from."""

    tokens: list[torch.Tensor]  # per image [n_i, D_llm]
    sources: list[torch.Tensor]  # per image [n_i] long: the LLM-token index (slot of the image block) of each
    position_ids: str = "contiguous"  # "original": moved tokens keep their patch's position (see family.merge)
    decisions: list[dict] | None = None  # per image, what a deciding strategy chose (written to the predictions)
    decision_seconds: float = 0.0  # time spent deciding before the answer pass (cot_route's routing generation)


class SinkStrategy(nn.Module):
    """Routes projector-input features to per-image LLM tokens.

    A strategy is an `nn.Module` so that its trainable parts (a second projector, a router, gates) are its own
    parameters, optimised and saved with the run. `needs_sinks` tells the module whether to run the detector.
    Index strategies implement `select` (which patches, in what order); the projection runs once for the whole
    batch, so routing costs a gather.
    """

    registry: ClassVar[dict[str, type[SinkStrategy]]] = {}
    name: ClassVar[str]
    needs_sinks: ClassVar[bool] = True
    training_free: ClassVar[bool] = True  # False: the strategy has parts that must be trained first

    def __init_subclass__(cls, name: str | None = None, **kwargs):
        super().__init_subclass__(**kwargs)
        if name is not None:
            if name in SinkStrategy.registry:
                raise ValueError(f"strategy name {name!r} is already registered by {SinkStrategy.registry[name]}")
            cls.name = name
            SinkStrategy.registry[name] = cls

    def __init__(self, position_ids: str = "contiguous"):
        super().__init__()
        if position_ids not in POSITION_MODES:
            raise ValueError(f"sink_strategy.strategy.position_ids must be one of {POSITION_MODES}, "
                             f"got {position_ids!r}")
        self.position_ids = position_ids

    def setup(self, model: nn.Module, family) -> None:
        """Build parts shaped like (or copied from) the model's (no-op). The module calls it on construction, and
        `evaluate.py` again once a checkpoint without strategy weights has loaded the model's trained weights."""

    def select(self, visual: VisualFeatures, sink_mask: torch.Tensor | None) -> list[torch.Tensor]:
        """Per image, the LLM-token indices to send to the LLM, in order."""
        raise NotImplementedError

    def forward(self, visual: VisualFeatures, sink_mask: torch.Tensor | None,
                project: Callable[[VisualFeatures], list[torch.Tensor]], ask: Ask | None = None) -> Routed:
        """`sink_mask` [n_images, M] marks LLM tokens (see `VisualFamily.token_sinks`); `ask` lets a strategy
        question the model about the images before routing (see `Ask`)."""
        projected = project(visual)
        sources = self.select(visual, sink_mask)
        return Routed([p[s] for p, s in zip(projected, sources)], sources, self.position_ids)


class OrderedSinks(SinkStrategy):
    """A strategy that places the sinks somewhere, ordered by `order`: `raster`, or `norm` (highest first)."""

    def __init__(self, order: str = "raster", position_ids: str = "contiguous"):
        super().__init__(position_ids)
        if order not in SINK_ORDERS:
            raise ValueError(f"sink_strategy.strategy.order must be one of {SINK_ORDERS}, got {order!r}")
        self.order = order


def split_sinks(visual: VisualFeatures, sink_mask: torch.Tensor, order: str = "raster"):
    """Per image, (sink token indices, other token indices): others in raster order, sinks in `order`.

    `norm` orders sinks by their token's norm, highest first (a merged token's norm covers all its patches).
    """
    norms = token_norms(visual.token_features()) if order == "norm" else None
    pairs = []
    for i, (mask, n_tokens) in enumerate(zip(sink_mask, visual.slots)):
        sinks = mask[:n_tokens].nonzero().squeeze(1)
        if norms is not None:
            sinks = sinks[torch.sort(norms[i, sinks], descending=True, stable=True).indices]
        pairs.append((sinks, (~mask[:n_tokens]).nonzero().squeeze(1)))
    return pairs
