"""Prompts that begin alike are prefilled once (sinkflow.models.shared_prefix): cot_route's routing rows about one
image share one prefill of their prefix, and the answer pass takes the prefix it shares with the routing pass from
that pass's cache. The answers equal prefilling everything in full on every family, the logits after each cut equal
the full forward's, the shared length is where the prompts part (after the image block for `both`, after the sinks
for `sinks_only`, before the image for `others_only`), and where it would not be exact nothing is reused."""

import pytest
import torch
from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer

import sinkflow.models.shared_prefix as shared_prefix_module
import sinkflow.module
import sinkflow.sinks.strategies.cot_route as cot_route_module
from sinkflow.models.families.base import FAMILIES
from sinkflow.models.shared_prefix import RoutingPrompts, one_image_per_row, prefill_once, reuse_prefix, shared_prefix
from sinkflow.sinks.strategies.cot_route import CotRoute

QUESTIONS = ["What is the background color?", "How many shapes are there?", "Where is the red circle?"]


@pytest.fixture(scope="module")
def images(resized_images):
    return resized_images([(64, 64), (48, 32), (32, 48)])


@pytest.fixture
def routes(monkeypatch):
    """`routes(*names)`: cot_route decides these routes for the three images of every batch, in order, whatever the
    model says."""

    def force(*names):
        assert len(names) == len(QUESTIONS)
        chosen = iter(names * 100)
        monkeypatch.setattr(cot_route_module, "decide", lambda image, question: {"route": next(chosen)})

    return force


@pytest.fixture
def spied(monkeypatch):
    """`spied(name)`: every call the module makes to `shared_prefix.<name>`, as (arguments, cached prefix length or
    None), the length read before generation grows the cache."""

    def spy(name: str) -> list:
        calls, function = [], getattr(shared_prefix_module, name)

        def recording(*args):
            result = function(*args)
            calls.append((args, result and result[1].get_seq_length()))
            return result

        monkeypatch.setattr(sinkflow.module, name, recording)
        return calls

    return spy


def logits_after_cut(hf, inputs: dict, cut: tuple[dict, DynamicCache]) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits at every row's last token: the full rows, and the cut rows over their cache (positions counted
    along the mask, as generation counts them)."""
    cut_inputs, cache = cut
    prefix = cache.get_seq_length()
    mask = cut_inputs["attention_mask"]
    with torch.no_grad():
        full = hf(**inputs).logits[:, -1]
        got = hf(
            inputs_embeds=cut_inputs["inputs_embeds"][:, prefix:],
            attention_mask=mask,
            position_ids=(mask.long().cumsum(-1) - 1).clamp_min(0)[:, prefix:],
            past_key_values=cache,
        ).logits[:, -1]
    return got, full


def image_block(module, image: str) -> tuple[int, int]:
    """Where the image block starts in a one-row generation prompt (no padding), and how many tokens it has."""
    sample = {"id": "0", "image": image, "conversations": [{"from": "human", "value": "<image>\nx"}]}
    ids = module.question_collator.ask(module.question_collator([sample]), ["x"])["input_ids"][0]
    shown = ids == module.hf.config.image_token_id
    return int(shown.nonzero()[0]), int(shown.sum())


def answers_both_ways(planted_family_module, family_name, routing_prompts, images) -> dict[bool, list[str]]:
    """The greedy answers of cot_route with and without reuse, on the same tiny model."""
    answers = {}
    for reuse in (True, False):
        module = planted_family_module(family_name, 5, CotRoute(**routing_prompts, reuse=reuse)).eval()
        module.generation.max_new_tokens = 4
        samples = [
            {"id": str(i), "image": image, "conversations": [{"from": "human", "value": f"<image>\n{question}"}]}
            for i, (image, question) in enumerate(zip(images, QUESTIONS))
        ]
        answers[reuse] = module.generate(module.question_collator(samples))
    return answers


@pytest.mark.parametrize("family_name", FAMILIES.names())
def test_answers_equal_the_full_prefill_on_every_family(
    family_name, images, routing_prompts, planted_family_module, routes, spied
):
    reuses = spied("reuse_prefix")
    routes("both", "sinks_only", "others_only")
    answers = answers_both_ways(planted_family_module, family_name, routing_prompts, images)
    assert answers[True] == answers[False] and all(answers[True])
    if family_name == "llava":  # the family whose LLM reads embeddings and a mask only: the prefix was reused
        assert reuses and reuses[0][1] is not None


@pytest.mark.parametrize(
    ("chosen", "cut"),
    [
        (("both", "both", "both"), "after the image"),
        (("both", "sinks_only", "both"), "after the sinks"),
        (("sinks_only", "others_only", "both"), "before the image"),
    ],
)
def test_the_shared_length_is_where_the_prompts_part_and_the_logits_after_it_are_exact(
    chosen, cut, images, routing_prompts, planted_family_module, routes, spied
):
    reuses = spied("reuse_prefix")
    routes(*chosen)
    answers = answers_both_ways(planted_family_module, "llava", routing_prompts, images)
    assert answers[True] == answers[False]
    ((inputs, rows, asked), prefix), *_ = reuses
    module = planted_family_module("llava", 5, CotRoute(**routing_prompts))
    start, block = image_block(module, images[0])
    # After the image both prompts go on with "\n" before their own words: one more shared token.
    expected = {"after the image": start + block + 1, "after the sinks": start + 2, "before the image": start}[cut]
    assert prefix == expected
    got, full = logits_after_cut(module.hf, inputs, reuse_prefix(inputs, rows, asked))
    torch.testing.assert_close(got, full, atol=1e-5, rtol=1e-5)


def test_routing_rows_about_one_image_prefill_their_shared_prefix_once(
    images, routing_prompts, planted_family_module, spied
):
    once = spied("prefill_once")
    module = planted_family_module("llava", 5, CotRoute(**routing_prompts)).eval()
    module.generation.max_new_tokens = 2
    samples = [
        {"id": str(i), "image": image, "conversations": [{"from": "human", "value": f"<image>\n{question}"}]}
        for i, (image, question) in enumerate(zip(images, QUESTIONS))
    ]
    batch = module.question_collator(samples)
    module.generate(batch)
    ((_, inputs, images_asked), prefix), *_ = once
    assert images_asked == [0, 1, 2, 0, 1, 2]  # each image's type, then each question's scope
    start, block = image_block(module, images[0])
    assert prefix == start + block + 1  # the image block and the "\n" after it
    got, full = logits_after_cut(module.hf, inputs, prefill_once(module.hf, inputs, images_asked))
    torch.testing.assert_close(got, full, atol=1e-5, rtol=1e-5)
    # The second batch about the same images asks only the scopes: one row per image, nothing to share.
    module.generate(batch)
    assert once[1][1] is None


def counting(ask, rows: list[int]):
    """`ask` that appends the number of questions of each call to `rows`."""

    def asking(batch, visual, questions, *rest):
        rows.append(len(questions))
        return ask(batch, visual, questions, *rest)

    return asking


def test_reuse_false_asks_every_image_in_every_batch_and_prefills_in_full(
    images, routing_prompts, planted_family_module, spied
):
    reuses = spied("reuse_prefix")
    asked_rows = {}
    for reuse in (True, False):
        module = planted_family_module("llava", 5, CotRoute(**routing_prompts, reuse=reuse)).eval()
        module.generation.max_new_tokens = 2
        batch = module.question_collator(
            [{"id": "0", "image": images[0], "conversations": [{"from": "human", "value": f"<image>\n{QUESTIONS[0]}"}]}]
        )
        rows = asked_rows[reuse] = []
        module.ask = counting(module.ask, rows)
        module.generate(batch)
        module.generate(batch)
    assert asked_rows == {True: [2, 1], False: [2, 2]}  # the image's type asked once per evaluation, or every time
    assert len(reuses) == 2  # reuse=False never offered its routing cache


def cache_of(layers: list[DynamicLayer]) -> DynamicCache:
    cache = DynamicCache()
    cache.layers = layers
    return cache


def test_nothing_is_reused_where_it_would_not_be_exact():
    embeds, mask = torch.randn(2, 5, 4), torch.ones(2, 5, dtype=torch.long)
    layer = DynamicLayer()
    layer.update(torch.randn(2, 1, 5, 2), torch.randn(2, 1, 5, 2))
    asked = RoutingPrompts(embeds, mask, [0, 1], cache_of([layer]))
    inputs = {"inputs_embeds": embeds.clone(), "attention_mask": mask}
    cut, cache = reuse_prefix(inputs, [0, 1], asked)
    assert cache.get_seq_length() == 4  # one token left to prefill
    torch.testing.assert_close(cache.layers[0].keys, layer.keys[:, :, :4])
    # M-RoPE positions (or token types) beside the embeddings: positions would not follow the mask.
    assert reuse_prefix({**inputs, "position_ids": torch.zeros(3, 2, 5)}, [0, 1], asked) is None
    assert prefill_once(None, {**inputs, "position_ids": torch.zeros(3, 2, 5)}, [0, 0]) is None
    # A row about an image no routing row asked about, or a row with several images.
    assert reuse_prefix(inputs, [0, 2], asked) is None
    assert one_image_per_row([0, 0, 1], 2) is None and one_image_per_row([0, 1], 2) == [0, 1]
    # A sliding-window layer drops old keys: its columns are not the prompt's.
    sliding = DynamicSlidingWindowLayer(sliding_window=3)
    sliding.update(torch.randn(2, 1, 5, 2), torch.randn(2, 1, 5, 2))
    assert reuse_prefix(inputs, [0, 1], RoutingPrompts(embeds, mask, [0, 1], cache_of([layer, sliding]))) is None
    # Nothing in common.
    assert reuse_prefix({**inputs, "inputs_embeds": torch.randn(2, 5, 4)}, [0, 1], asked) is None


def test_the_shared_length_counts_equal_leading_rows_and_left_padding_is_skipped():
    a = torch.arange(12.0).view(6, 2)
    b = a.clone()
    b[3] += 1
    assert shared_prefix(a, b) == 3 and shared_prefix(a, a[:4]) == 4 and shared_prefix(a, b[3:]) == 0
    # Routing row 0 left-padded by two columns, answer row 0 by one: the cache columns taken start after the padding.
    prompt = torch.randn(4, 3)
    asked_embeds = torch.cat([torch.zeros(2, 3), prompt, torch.randn(1, 3)])[None]
    asked_mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1]])
    keys = torch.arange(7.0).view(1, 1, 7, 1)
    layer = DynamicLayer()
    layer.update(keys, keys.clone())
    answer = {"inputs_embeds": torch.cat([torch.zeros(1, 3), prompt[:3], torch.randn(2, 3)])[None]}
    answer["attention_mask"] = torch.tensor([[0, 1, 1, 1, 1, 1]])
    cut, cache = reuse_prefix(answer, [0], RoutingPrompts(asked_embeds, asked_mask, [0], cache_of([layer])))
    assert cache.layers[0].keys.flatten().tolist() == [2.0, 3.0, 4.0]
    # The rest of the row after the prefix columns; the mask covers prefix and rest.
    assert cut["attention_mask"].tolist() == [[1, 1, 1, 1, 1]]
    torch.testing.assert_close(cut["inputs_embeds"][0, 3:], answer["inputs_embeds"][0, 4:])
