"""`vaf`: ClearSight's Visual Amplification Fusion (arXiv 2503.13107), training-free.

In middle layers, the query rows after the image (the question, the answer prompt and every generated token) scale
their pre-softmax logits: those of visual keys by `visual_scale` (> 1: more attention to the image), those of the
keys before the image (system prompt, BOS) by `system_scale` (< 1: less to them), then the softmax renormalises.
Defaults are the official code's LLaVA-1.5-7B runs: 1.15 and 0.95, layers 9-14 of 32, all heads. The spans are the
rows' own (the code hard-codes LLaVA-1.5's 35 system and 576 image tokens).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sinkflow.checks import number
from sinkflow.interventions.base import AttentionCall, AttentionIntervention


class Vaf(AttentionIntervention, name="vaf"):
    """Rows after the image: visual logits x visual_scale, logits before the image x system_scale."""

    edits_rows = True

    def __init__(
        self,
        visual_scale: float = 1.15,
        system_scale: float = 0.95,
        layers: Sequence[int] | None = (9, 10, 11, 12, 13, 14),
        reference_depth: int | None = 32,
    ):
        super().__init__(layers, reference_depth)
        self.visual_scale = number("intervention.visual_scale", visual_scale, above=0)
        self.system_scale = number("intervention.system_scale", system_scale, above=0)

    def touched(self, call: AttentionCall) -> torch.Tensor:
        return call.queries[None, :] >= call.image_end[:, None]

    def edit_logits(self, logits: torch.Tensor, call: AttentionCall, rows: torch.Tensor) -> torch.Tensor:
        system = call.keys[None, :] < call.image_start[:, None]
        scale = torch.where(call.visual, self.visual_scale, torch.where(system, self.system_scale, 1.0))
        return logits * scale[:, None, None, :].to(logits.dtype)
