"""`prune`: sink-aware token pruning at a budget, VisionZip-style (arXiv 2412.04467), training-free.

Each image keeps `budget` LLM tokens (a count, or below 1 a fraction of the image's tokens): `budget - contextual`
dominant ones (with `keep_sinks`, the ViT sinks first, then the tokens that receive the most attention in the ViT
block the projector reads: from CLS where the tower has one, else on average, summed over heads), in raster order;
then `contextual` tokens (a count, or below 1 a fraction of the budget) that summarise the rest: evenly spaced
targets among the remaining tokens, each other remaining token joining the target whose key (in that block,
averaged over heads) is most similar by cosine, and each target's features becoming its own plus the mean of its
members' before the projector. The sequence is shorter: the LLM sees `budget` tokens per image, not a mask. An
image with no more tokens than the budget keeps them all.

VisionZip's budgets on LLaVA-1.5's 576 tokens: 64 = 54 + 10 (the default), 128 = 108 + 20, 192 = 162 + 30. Its
code counts CLIP's CLS among the dominant tokens and feeds it to the LLM; LLaVA's projector never reads CLS, so here
the budget is the image's own tokens. A token groups `group` patches (Qwen's 2x2 window): its score sums theirs, its
key averages theirs, and merging adds the members' patch features position by position.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch.nn import functional as F

from sinkflow.checks import number
from sinkflow.pathway import Ask, PositionIds, Project, Routed, VisualFeatures
from sinkflow.sinks.strategies.base import SinkStrategy


class Prune(SinkStrategy, name="prune"):
    """Sinks and the most-attended tokens up to a budget, the rest merged into a few contextual tokens."""

    needs_vit_attention = True
    prunes = True

    def __init__(
        self,
        budget: float = 64,
        contextual: float = 10,
        keep_sinks: bool = True,
        position_ids: PositionIds = "contiguous",
    ):
        super().__init__(position_ids)
        self.budget = _count_or_fraction("sink_strategy.strategy.budget", budget, above_zero=True)
        self.contextual = _count_or_fraction("sink_strategy.strategy.contextual", contextual, above_zero=False)
        if self.budget >= 1 and self.contextual >= self.budget:  # a fraction of the budget is always below it
            raise ValueError(
                f"sink_strategy.strategy.contextual ({contextual}) must be below the budget ({budget}): the dominant "
                "tokens take the rest"
            )
        self.keep_sinks = keep_sinks
        self.needs_sinks = keep_sinks

    def sizes(self, n_tokens: int) -> tuple[int, int]:
        """The tokens an image of `n_tokens` keeps, and how many of them are contextual."""
        budget = self.budget if self.budget >= 1 else max(1, round(self.budget * n_tokens))
        contextual = (
            self.contextual if self.contextual >= 1 or self.contextual == 0 else round(self.contextual * budget)
        )
        return int(budget), int(min(contextual, budget - 1))

    def plan(self, visual: VisualFeatures, sink_mask: torch.Tensor | None) -> list[tuple]:
        """Per image: its dominant tokens (raster order), its contextual targets, and each target's members."""
        if visual.attention_received is None:
            raise ValueError("prune reads the ViT's attention: run it through SinkflowModule (needs_vit_attention)")
        plans = []
        for i, (n_tokens, length) in enumerate(zip(visual.slots, visual.lengths)):
            budget, contextual = self.sizes(n_tokens)
            if n_tokens <= budget:
                plans.append((torch.arange(n_tokens), torch.arange(0), []))
                continue
            scores = visual.attention_received[i, :length].view(n_tokens, visual.group).sum(1)
            if self.keep_sinks and sink_mask is not None:
                scores = scores.masked_fill(sink_mask[i, :n_tokens].to(scores.device), float("inf"))
            order = scores.argsort(descending=True, stable=True).cpu()
            dominant = order[: budget - contextual].sort().values
            rest = order[budget - contextual :].sort().values
            if contextual == 0:
                plans.append((dominant, torch.arange(0), []))
                continue
            step = max(1, len(rest) // contextual)
            targets = rest[::step][:contextual]
            others = rest[~torch.isin(rest, targets)]
            keys = visual.attention_keys[i, :length].view(n_tokens, visual.group, -1).mean(1)
            keys = F.normalize(keys.float(), dim=-1)
            nearest = (keys[others] @ keys[targets].T).argmax(-1).cpu() if len(others) else torch.zeros(0)
            members = [others[nearest == t] for t in range(len(targets))]
            plans.append((dominant, targets, members))
        return plans

    def forward(
        self, visual: VisualFeatures, sink_mask: torch.Tensor | None, project: Project, ask: Ask | None = None
    ) -> Routed:
        plans = self.plan(visual, sink_mask)
        features = visual.features.clone()
        g = visual.group
        for i, (_, targets, members) in enumerate(plans):
            for target, group in zip(targets.tolist(), members):
                if len(group):
                    own = features[i, target * g : (target + 1) * g]
                    merged = visual.features[i].view(-1, g, features.shape[-1])[group.to(features.device)].mean(0)
                    features[i, target * g : (target + 1) * g] = own + merged
        projected = project(replace(visual, features=features))
        tokens, sources = [], []
        for tokens_i, (dominant, targets, _) in zip(projected, plans):
            kept = torch.cat([dominant, targets]).to(tokens_i.device)
            tokens.append(tokens_i[kept])
            sources.append(kept)
        return Routed(tokens, sources, self.position_ids)


def _count_or_fraction(setting: str, value: float, above_zero: bool) -> float:
    """A token count (an integer >= 1) or a fraction in (0, 1)."""
    number(setting, value, above=0) if above_zero else number(setting, value, at_least=0)
    if value >= 1 and value != int(value):
        raise ValueError(f"`{setting}` must be a whole number of tokens or a fraction below 1, got {value}")
    return int(value) if value >= 1 else float(value)
