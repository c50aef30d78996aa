"""`dual_mlp` (DIYSink, docs/paper.md#dual-mlp): sink tokens and the other tokens through two projectors of the
family's own architecture, the sink block first, each block scaled by a weight (1 here; the `reweight` router
learns them).

`init: copy` starts both projectors from the model's trained one (so, before any training, the LLM sees exactly
what `sink_front` gives it); `init: random` re-initialises them. The family's own projector is then unused and
frozen: only the two copies train (with the strategy's learning rate, and saved with the run).

Two-stage training (docs/paper.md#two-stage-recipe): `stage: sinks` / `stage: others` trains one projector alone
on its own token type (the other is frozen and unused); `stage: both` (stage 2) fine-tunes on the concatenation,
starting from the stage-1 projectors given by `sink_projector_from` / `other_projector_from` (a run's
`checkpoints/export/strategy.safetensors`).
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
from safetensors.torch import load_file
from torch import nn

from sinkflow.checks import choice
from sinkflow.models.families.base import VisualFamily
from sinkflow.pathway import Ask, PositionIds, Project, Routed, VisualFeatures
from sinkflow.sinks.strategies.base import OrderedSinks, SinkOrder, split_sinks

Init = Literal["copy", "random"]
Stage = Literal["both", "sinks", "others"]


class DualMLP(OrderedSinks, name="dual_mlp"):
    """Sink projector + non-sink projector; routed tokens are [sinks; others] per image."""

    training_free = False
    trains_projectors: bool = True  # False: both projectors come trained (from a Dual-MLP run) and stay frozen

    def __init__(
        self,
        init: Init = "copy",
        order: SinkOrder = "raster",
        position_ids: PositionIds = "contiguous",
        stage: Stage = "both",
        sink_projector_from: str | None = None,
        other_projector_from: str | None = None,
    ):
        super().__init__(order, position_ids)
        self.init = choice("sink_strategy.strategy.init", init, Init)
        self.stage = choice("sink_strategy.strategy.stage", stage, Stage)
        # projector name -> the strategy.safetensors its stage-1 weights load from
        self.weight_files = {"sink_projector": sink_projector_from, "other_projector": other_projector_from}
        self.sink_projector: nn.Module | None = None
        self.other_projector: nn.Module | None = None

    def setup(self, model: nn.Module, family: VisualFamily) -> None:
        base = family.projector(model)
        base.requires_grad_(False)  # replaced by the two copies below
        self.sink_projector, self.other_projector = copy.deepcopy(base), copy.deepcopy(base)
        for projector in (self.sink_projector, self.other_projector):
            projector.requires_grad_(True)
            if self.init == "random":
                for layer in projector.modules():
                    if hasattr(layer, "reset_parameters") and layer is not projector:
                        layer.reset_parameters()
        for name, path in self.weight_files.items():
            if path:
                prefix = f"{name}."
                state = {k[len(prefix) :]: v for k, v in load_file(path).items() if k.startswith(prefix)}
                if not state:
                    raise ValueError(f"{path}: no {name} weights (expected a dual_mlp run's strategy.safetensors)")
                getattr(self, name).load_state_dict(state)
        # Stage 1 trains one projector; the other is unused, so frozen (DDP rejects unused trainable parameters).
        frozen = {"sinks": [self.other_projector], "others": [self.sink_projector]}.get(self.stage, [])
        for projector in frozen if self.trains_projectors else (self.sink_projector, self.other_projector):
            projector.requires_grad_(False)

    def block_weights(self, visual: VisualFeatures, batch_size: int) -> torch.Tensor:
        """[n_images, 2] weights of the (sink, other) blocks; fixed at 1 for the plain Dual-MLP."""
        return visual.features.new_ones(batch_size, 2)

    def forward(
        self, visual: VisualFeatures, sink_mask: torch.Tensor | None, project: Project, ask: Ask | None = None
    ) -> Routed:
        if self.sink_projector is None:
            raise RuntimeError("dual_mlp has no projectors yet: SinkflowModule calls strategy.setup(model, family)")
        pairs = split_sinks(visual, sink_mask, self.order)
        blocks = []  # (projected tokens per image, indices per image, weight column)
        if self.stage != "others":
            blocks.append((project(visual, self.sink_projector), [s for s, _ in pairs], 0))
        if self.stage != "sinks":
            blocks.append((project(visual, self.other_projector), [o for _, o in pairs], 1))
        weights = self.block_weights(visual, len(pairs))
        tokens = [
            torch.cat(
                [
                    projected[i][index[i]] * weights[i, column].to(projected[i].dtype)
                    for projected, index, column in blocks
                ]
            )
            for i in range(len(pairs))
        ]
        sources = [torch.cat([index[i] for _, index, _ in blocks]) for i in range(len(pairs))]
        return Routed(tokens, sources, self.position_ids)
