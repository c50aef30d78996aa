"""`pai`: the attention part of PAI, "Paying More Attention to Image" (arXiv 2407.21771), training-free.

In its layers, the query rows that produce answer tokens (the prompt's last token and every generated one) pay more
attention to the image: each pre-softmax logit z of a visual key becomes z + alpha * |z|, then the softmax
renormalises. Defaults are those of the official code's LLaVA-1.5 runs (alpha 0.2; layers 2-31 of 32). PAI's
other part, a classifier-free-guidance contrast with the image-free logits at decoding, is a decoding rule, not an
attention intervention, and is not part of this one.

Every generated token's row is edited whether or not a KV cache is used, so generation with and without the cache
agree (PAI's code edits the last row of every forward, the same rows when decoding with a cache, as it does).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sinkflow.checks import number
from sinkflow.interventions.base import AttentionCall, AttentionIntervention


class Pai(AttentionIntervention, name="pai"):
    """Answer-token rows: visual logits z -> z + alpha |z|."""

    edits_rows = True

    def __init__(self, alpha: float = 0.2, layers: Sequence[int] | None = None, reference_depth: int | None = 32):
        super().__init__(layers, reference_depth)
        self.alpha = number("intervention.alpha", alpha, at_least=0)

    def touched(self, call: AttentionCall) -> torch.Tensor:
        return call.queries[None, :] >= (call.answer_start[:, None] - 1)

    def edit_logits(self, logits: torch.Tensor, call: AttentionCall, rows: torch.Tensor) -> torch.Tensor:
        visual = call.visual[:, None, None, :]  # [B, 1, 1, K]
        return torch.where(visual & logits.isfinite(), logits + self.alpha * logits.abs(), logits)
