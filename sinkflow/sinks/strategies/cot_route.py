"""`cot_route` (DIYSink CoT routing, docs/paper.md#cot-routing): before answering, the model itself is asked two
short questions about each image (is it symbolic/simple or real-world/complex; does the question need global or
local understanding; their text is configured in conf/routing/, which the shapes training data reads too) and the
answers pick the visual input of the Dual-MLP:

    symbolic + global -> sinks only;  real-world + local -> non-sinks only;  anything else -> both.

The routing pass sees the full Dual-MLP input ([sinks; others]). Its two projectors come from a Dual-MLP run
(`projectors`) and stay frozen: routing is a hard choice, nothing here trains (`train_projectors: true` trains
them as Dual-MLP, for a model with no trained Dual-MLP; training always sees both blocks, routing is for
inference). Without `projectors` both are copies of the model's own projector, so the three routes are exactly
`sinks_only`, `drop_sinks` and `sink_front`.
Both questions about every image go through one batched generation (the images encoded and routed once), each
answer capped at `max_new_tokens`, by default the tokens the longest expected answer takes (`routing_answers`).
With `reuse` (the default) nothing the routing pass computed is computed again: an image's type is asked once per
evaluation, and the answer pass takes the prompt prefix it shares with the routing pass (the system text and the
image block up to the route's cut) from the routing pass's key/value cache (`sinkflow.models.shared_prefix`); both
are exact, `reuse: false` is the reference path.
Answers are parsed by keyword (first match wins, a negated keyword is skipped); every decision and both raw answers
go to the predictions file, and the routing time to the logs.
"""

from __future__ import annotations

import hashlib
import time

import torch

from sinkflow.checks import number
from sinkflow.pathway import Ask, PositionIds, Project, Routed, VisualFeatures
from sinkflow.sinks.routing_answers import ANSWERS, decide
from sinkflow.sinks.strategies.base import SinkOrder
from sinkflow.sinks.strategies.dual_mlp import DualMLP, Init


def content_key(block: torch.Tensor) -> str:
    """A key equal for exactly equal blocks (shape and values)."""
    return f"{tuple(block.shape)}:{hashlib.blake2b(block.detach().float().cpu().numpy().tobytes()).hexdigest()}"


class CotRoute(DualMLP, name="cot_route"):
    """The model's own answers route each image to sinks only, non-sinks only, or both."""

    decides = True

    def __init__(
        self,
        image_prompt: str,
        question_prompt: str,
        max_new_tokens: int | None = None,
        projectors: str | None = None,
        init: Init = "copy",
        order: SinkOrder = "raster",
        position_ids: PositionIds = "contiguous",
        train_projectors: bool = False,
        reuse: bool = True,
    ):
        super().__init__(init, order, position_ids, sink_projector_from=projectors, other_projector_from=projectors)
        self.trains_projectors = train_projectors
        if "{question}" not in question_prompt:
            raise ValueError(
                "`sink_strategy.strategy.question_prompt` must contain '{question}' (the user's "
                f"question), got {question_prompt!r}"
            )
        if max_new_tokens is not None:
            number("sink_strategy.strategy.max_new_tokens", max_new_tokens, integer=True, at_least=1)
        self.image_prompt, self.question_prompt, self.max_new_tokens = image_prompt, question_prompt, max_new_tokens
        self.reuse = self.reuse_routing_cache = reuse
        self.image_answers: dict[str, str] = {}  # image-type answers of this evaluation, by visual input

    def train(self, mode: bool = True) -> CotRoute:
        """A change of mode starts a new evaluation (the weights may have changed): its image-type answers are
        forgotten."""
        self.image_answers.clear()
        return super().train(mode)

    def forward(
        self, visual: VisualFeatures, sink_mask: torch.Tensor | None, project: Project, ask: Ask | None = None
    ) -> Routed:
        both = super().forward(visual, sink_mask, project)
        if self.training:  # routing is an inference-time choice: training sees the full Dual-MLP input
            return both
        if len(visual.questions) != len(both.tokens):
            raise ValueError(
                f"cot_route needs the question of every image: {len(visual.questions)} questions for "
                f"{len(both.tokens)} images"
            )
        if ask is None:
            raise RuntimeError("cot_route asks the model about each image: run it through SinkflowModule (ask=...)")
        start = time.perf_counter()
        # Both questions in one generation: the image type of each image not seen before in this evaluation (the
        # prompt and the visual input are the same for every question about an image, so is the answer: asked once,
        # remembered until the strategy changes mode), then the scope of every question.
        n = len(both.tokens)
        keys = [content_key(block) for block in both.tokens]
        known = self.image_answers if self.reuse else {}
        if self.reuse:
            new = sorted({k: i for i, k in reversed(list(enumerate(keys))) if k not in known}.values())
        else:
            new = list(range(n))
        questions = [self.image_prompt] * len(new)
        questions += [self.question_prompt.replace("{question}", q) for q in visual.questions]
        answers = ask(questions, [*new, *range(n)], both, self.max_new_tokens, ANSWERS)
        seconds = time.perf_counter() - start  # answers are decoded text, so the device work is done
        known.update({keys[i]: answer for i, answer in zip(new, answers[: len(new)])})
        image_answers, question_answers = [known[key] for key in keys], answers[len(new) :]
        decisions = [decide(a, q) for a, q in zip(image_answers, question_answers)]
        tokens, sources = [], []
        for i, decision in enumerate(decisions):
            n_sinks = int(sink_mask[i, : visual.slots[i]].sum())
            keep = {"sinks_only": slice(0, n_sinks), "others_only": slice(n_sinks, None)}.get(
                decision["route"], slice(None)
            )
            tokens.append(both.tokens[i][keep])
            sources.append(both.sources[i][keep])
        return Routed(tokens, sources, self.position_ids, decisions, seconds)
