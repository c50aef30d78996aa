"""The strategy interface: which visual tokens reach the LLM, in what order, through which projector."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class SinkStrategy(nn.Module):
    """Routes projector-input features to per-image LLM tokens.

    A strategy is an `nn.Module` so that its trainable parts (a second projector, a router, gates) are its own
    parameters, optimised and saved with the run. `needs_sinks` tells the module whether to run the detector.
    """

    needs_sinks: bool = True

    def forward(
        self,
        features: torch.Tensor,
        sink_mask: torch.Tensor | None,
        project: Callable[[torch.Tensor], torch.Tensor],
    ) -> list[torch.Tensor]:
        """`features` [n_images, N, D_vit], `sink_mask` [n_images, N] bool -> one [n_i, D_llm] tensor per image."""
        raise NotImplementedError
