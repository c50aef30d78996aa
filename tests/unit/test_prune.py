"""Sink-aware pruning at a budget (`prune`, VisionZip-style): the attention each patch receives equals CLS's row of
the ViT's feature block by hand; each image keeps its budget (the planted sinks among the dominant tokens), batched
as one at a time, on every family; the contextual tokens are their targets' features plus their members' mean
before the projector; the LLM sees a shorter sequence."""

import pytest
import torch
from hydra.utils import instantiate
from torch.nn import functional as F

from sinkflow.config import compose_config
from sinkflow.data.collate import Collator
from sinkflow.models.families.base import FAMILIES
from sinkflow.models.vit_attention import with_attention
from sinkflow.sinks.strategies.none import NoneStrategy
from sinkflow.sinks.strategies.prune import Prune

QUESTIONS = ["What is the background color?", "How many shapes are there?", "Is there a red circle?"]


@pytest.fixture(scope="module")
def images(resized_images):
    return resized_images([(64, 64), (48, 32), (32, 48)])


def samples(images) -> list[dict]:
    return [
        {"id": str(i), "image": image, "conversations": [{"from": "human", "value": f"<image>\n{question}"}]}
        for i, (image, question) in enumerate(zip(images, QUESTIONS))
    ]


def prune(*overrides: str):
    return instantiate(compose_config(["sink_strategy=prune", *overrides]).sink_strategy.strategy)


def test_each_patch_receives_the_attention_of_cls_in_the_feature_block(images, tiny_family):
    model, processor, family, template = tiny_family("llava", 3)
    model.set_attn_implementation("eager")
    batch = Collator(processor, template)(samples(images))
    with torch.no_grad():
        visual = with_attention(model, family, batch, grad=False)
        tower = family.vision_tower(model)
        out = tower(batch["pixel_values"], output_attentions=True, output_hidden_states=True)
    block = family.feature_block(model)
    expected = out.attentions[block][:, :, 0, 1:].sum(1)  # CLS's row, summed over heads, at each patch
    torch.testing.assert_close(visual.attention_received, expected, atol=1e-5, rtol=1e-4)
    layer = getattr(tower, "vision_model", tower).encoder.layers[block]
    attention = layer.self_attn
    normed = layer.layer_norm1(out.hidden_states[block])
    keys = attention.k_proj(normed).view(*normed.shape[:2], attention.num_heads, -1).mean(2)[:, 1:]
    torch.testing.assert_close(visual.attention_keys, keys, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family_name", FAMILIES.names())
def test_each_image_keeps_its_budget_with_its_sinks_batched_as_alone(family_name, images, planted_family_module):
    module = planted_family_module(
        family_name, 4, prune("sink_strategy.strategy.budget=6", "sink_strategy.strategy.contextual=2")
    ).eval()
    collate = module.question_collator
    with torch.no_grad():
        seen = module.pathway(collate(samples(images)), padding_side="left")
        alone = [module.pathway(collate([sample]), padding_side="left") for sample in samples(images)]
        plain = planted_family_module(family_name, 4, NoneStrategy()).eval().pathway(collate(samples(images)), "left")
    for i, (sources, n_tokens) in enumerate(zip(seen.routed.sources, seen.visual.slots)):
        assert len(sources) == min(6, n_tokens)
        sinks = seen.sinks[i, :n_tokens].nonzero().squeeze(1).tolist()
        assert set(sinks) <= set(sources[:4].tolist()) and sinks  # the dominant tokens hold the planted sinks
        torch.testing.assert_close(seen.routed.sources[i], alone[i].routed.sources[0])
        torch.testing.assert_close(seen.routed.tokens[i], alone[i].routed.tokens[0], atol=1e-5, rtol=1e-4)
    # Shorter rows, not a mask: the LLM gets the budget's visual tokens, and as many fewer tokens in all or more
    # (LLaVA-NeXT's block also loses the row ends after its last kept token).
    assert int(seen.columns.visual.sum()) == sum(min(6, n) for n in seen.visual.slots)
    lost = sum(n - min(6, n) for n in seen.visual.slots)
    assert (
        int(seen.inputs["attention_mask"].sum())
        <= int(plain.inputs["attention_mask"].sum()) - lost
        < int(plain.inputs["attention_mask"].sum())
    )
    module.generation.max_new_tokens = 4
    with torch.no_grad():
        batched = module.generate(collate(samples(images)))
        one_by_one = [module.generate(collate([sample]))[0] for sample in samples(images)]
    assert batched == one_by_one and all(batched)


def test_contextual_tokens_merge_their_members_before_the_projector(images, planted_family_module):
    strategy = prune("sink_strategy.strategy.budget=6", "sink_strategy.strategy.contextual=2")
    module = planted_family_module("llava", 4, strategy).eval()
    with torch.no_grad():
        seen = module.pathway(module.question_collator(samples(images)), padding_side="left")
        visual = seen.visual
        plans = strategy.plan(visual, seen.sinks)
        projector = module.family.projector(module.hf)
        for i, (dominant, targets, members) in enumerate(plans):
            rest = sorted(set(range(visual.slots[i])) - set(dominant.tolist()))
            assert targets.tolist() == rest[:: len(rest) // 2][:2]  # evenly spaced among the rest
            keys = F.normalize(visual.attention_keys[i, : visual.lengths[i]], dim=-1)
            for t, group in zip(targets.tolist(), members):
                for member in group.tolist():  # each member joined its most similar target
                    assert int((keys[member] @ keys[targets].T).argmax()) == targets.tolist().index(t)
                merged = visual.features[i, t] + (visual.features[i, group].mean(0) if len(group) else 0)
                expected = projector(merged[None])[0]
                torch.testing.assert_close(seen.routed.tokens[i][len(dominant) + targets.tolist().index(t)], expected)
            assert sorted(torch.cat([targets, *members]).tolist()) == rest  # every other token is in one group


def test_bad_budgets_are_named():
    with pytest.raises(ValueError, match=r"contextual \(6\) must be below the budget \(6\)"):
        Prune(budget=6, contextual=6)
    with pytest.raises(ValueError, match="sink_strategy.strategy.budget"):
        Prune(budget=0)
