"""The strategy interface: which visual tokens reach the LLM, in what order, through which projector.

Strategies register by name (`class SinkFront(SinkStrategy, name="sink_front")`) in `STRATEGIES`, which imports
every module of this package: a strategy is its module plus `conf/sink_strategy/<name>.yaml`.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import ClassVar, Literal

import torch
from torch import nn

from sinkflow.checks import choice
from sinkflow.models.families.base import VisualFamily
from sinkflow.pathway import Ask, PositionIds, Project, Routed, VisualFeatures
from sinkflow.registry import Registry
from sinkflow.sinks.detectors.base import token_norms

# Where the sinks' block is ordered by: raster position, or norm (highest first).
SinkOrder = Literal["raster", "norm"]


class SinkStrategy(nn.Module):
    """Routes projector-input features to per-image LLM tokens.

    A strategy is an `nn.Module` so that its trainable parts (a second projector, a router, gates) are its own
    parameters, optimised and saved with the run. `needs_sinks` tells the module whether to run the detector.
    Index strategies implement `select` (which patches, in what order); the projection runs once for the whole
    batch, so routing costs a gather.
    """

    name: ClassVar[str]
    needs_sinks: ClassVar[bool] = True
    training_free: ClassVar[bool] = True  # False: the strategy has parts that must be trained first
    decides: ClassVar[bool] = False  # True: it asks the model about each image before routing (`ask`)
    # True: it reads what each patch receives in the ViT's feature block (`VisualFeatures.attention_received`)
    needs_vit_attention: ClassVar[bool] = False
    # True: it cuts tokens to a budget (compared with the other sink methods in experiment=methods_table, not in the
    # routing sweep)
    prunes: ClassVar[bool] = False
    # True: the answer pass may take the prefix it shares with the routing prompts from their key/value cache
    # (sinkflow.models.shared_prefix); a deciding strategy's option.
    reuse_routing_cache: bool = False

    def __init_subclass__(cls, name: str | None = None, **kwargs):
        super().__init_subclass__(**kwargs)
        if name is not None:
            cls.name = name
            STRATEGIES.register(name, cls)

    def __init__(self, position_ids: PositionIds = "contiguous"):
        super().__init__()
        self.position_ids = choice("sink_strategy.strategy.position_ids", position_ids, PositionIds)

    def setup(self, model: nn.Module, family: VisualFamily) -> None:
        """Build parts shaped like (or copied from) the model's (no-op). The module calls it on construction, and
        `evaluate.py` again once a checkpoint without strategy weights has loaded the model's trained weights."""

    def select(self, visual: VisualFeatures, sink_mask: torch.Tensor | None) -> list[torch.Tensor]:
        """Per image, the LLM-token indices to send to the LLM, in order."""
        raise NotImplementedError

    def forward(
        self, visual: VisualFeatures, sink_mask: torch.Tensor | None, project: Project, ask: Ask | None = None
    ) -> Routed:
        """`sink_mask` [n_images, M] marks LLM tokens (see `VisualFamily.token_sinks`); `ask` lets a strategy
        question the model about the images before routing (see `Ask`)."""
        projected = project(visual)
        sources = self.select(visual, sink_mask)
        return Routed([p[s] for p, s in zip(projected, sources)], sources, self.position_ids)


class OrderedSinks(SinkStrategy):
    """A strategy that places the sinks somewhere, ordered by `order`: `raster`, or `norm` (highest first)."""

    def __init__(self, order: SinkOrder = "raster", position_ids: PositionIds = "contiguous"):
        super().__init__(position_ids)
        self.order = choice("sink_strategy.strategy.order", order, SinkOrder)


def split_sinks(
    visual: VisualFeatures, sink_mask: torch.Tensor, order: SinkOrder = "raster"
) -> list[tuple[torch.Tensor, torch.Tensor]]:
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


STRATEGIES: Registry[type[SinkStrategy]] = Registry("strategy", "sinkflow.sinks.strategies")


def strategy_name(strategy_cfg: Mapping | None) -> str:
    """The registry name of the strategy a `sink_strategy` config (or a checkpoint's copy of it) instantiates, or
    '?' when it names none."""
    target = ((strategy_cfg or {}).get("strategy") or {}).get("_target_")
    if not target:
        return "?"
    module_name, _, class_name = target.rpartition(".")
    try:
        strategy = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        return class_name  # a strategy this install does not have: its class name still tells the user
    return getattr(strategy, "name", class_name)
