"""`reweight` (DIYSink ReW, docs/paper.md#rew): Dual-MLP whose two blocks are scaled by weights that a small router
predicts from the question alone (a frozen sentence encoder, then an MLP). Only the router trains; the two
projectors come from Dual-MLP training (`projectors` path) and stay frozen (`train_projectors: true` trains them
with the router, for a model that has no trained Dual-MLP, e.g. the tiny simulation). The router's last layer starts at
zero with a bias that makes both weights exactly 1, so training starts from plain Dual-MLP.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from sinkflow.checks import choice, number
from sinkflow.models.encoders import SentenceEncoder
from sinkflow.pathway import PositionIds, VisualFeatures
from sinkflow.sinks.strategies.base import SinkOrder
from sinkflow.sinks.strategies.dual_mlp import DualMLP, Init

Activation = Literal["softplus", "sigmoid2", "exp"]
# activation(x) and the x at which it equals 1.
ACTIVATIONS = {
    "softplus": (nn.functional.softplus, math.log(math.e - 1)),
    "sigmoid2": (lambda x: 2 * torch.sigmoid(x), 0.0),
    "exp": (torch.exp, 0.0),
}


class Reweight(DualMLP, name="reweight"):
    """Question-conditioned weights for the (sink, other) blocks of a Dual-MLP."""

    def __init__(
        self,
        encoder: str = "minilm",
        hidden: int = 256,
        activation: Activation = "softplus",
        projectors: str | None = None,
        init: Init = "copy",
        order: SinkOrder = "raster",
        position_ids: PositionIds = "contiguous",
        cache_size: int = 100_000,
        train_projectors: bool = False,
    ):
        super().__init__(init, order, position_ids, sink_projector_from=projectors, other_projector_from=projectors)
        self.trains_projectors = train_projectors  # the paper trains the router alone, on a trained Dual-MLP
        choice("sink_strategy.strategy.activation", activation, Activation)
        number("sink_strategy.strategy.hidden", hidden, integer=True, at_least=1)  # before the encoder loads
        self.activation = activation
        self.encoder = SentenceEncoder(encoder, cache_size=cache_size)
        self.router = nn.Sequential(nn.Linear(self.encoder.dim, hidden), nn.GELU(), nn.Linear(hidden, 2))
        nn.init.zeros_(self.router[-1].weight)
        nn.init.constant_(self.router[-1].bias, ACTIVATIONS[activation][1])

    def block_weights(self, visual: VisualFeatures, batch_size: int) -> torch.Tensor:
        if len(visual.questions) != batch_size:
            raise ValueError(
                f"reweight needs the question of every image: {len(visual.questions)} questions for {batch_size} images"
            )
        embedded = self.encoder(visual.questions).to(self.router[0].weight.dtype)
        return ACTIVATIONS[self.activation][0](self.router(embedded))
