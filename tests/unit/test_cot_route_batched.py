"""cot_route asks both routing questions about every image in one generation, on every family: the answers equal
asking each question about each image alone, the answers are capped at the longest expected label, and a bad
selection of images is named."""

from functools import partial

import pytest
import torch

from sinkflow.models.families.base import FAMILIES
from sinkflow.models.families.llava import LlavaFamily
from sinkflow.models.tiny import build_tokenizer
from sinkflow.pathway import Routed, VisualFeatures
from sinkflow.sinks.routing_answers import answer_tokens
from sinkflow.sinks.strategies.cot_route import CotRoute, content_key
from sinkflow.sinks.strategies.dual_mlp import DualMLP

QUESTIONS = ["What is the background color?", "Is there a red circle in the image?", "How many shapes are there?"]


@pytest.fixture(scope="module")
def images(resized_images):
    """Three images in two sizes (Qwen keeps each size, the tiling families cut them differently)."""
    return resized_images([(64, 64), (48, 32), (32, 48)])


def hand_counted_cap(tokenizer) -> int:
    """Per expected label, with and without a leading space, the fewest of its tokens whose text names the label's
    keyword ('real' for 'real-world'); the most over the labels."""
    words = {"symbolic": "symbolic", "real-world": "real", "global": "global", "local": "local"}
    need = []
    for label, word in words.items():
        for text in (label, f" {label}"):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            need.append(next(n for n in range(1, len(ids) + 1) if word in tokenizer.decode(ids[:n])))
    return max(need)


@pytest.mark.parametrize("family_name", FAMILIES.names())
def test_one_batched_generation_answers_as_each_question_asked_alone(
    family_name, images, routing_prompts, planted_family_module
):
    module = planted_family_module(family_name, 3, CotRoute(**routing_prompts)).eval()
    collate = module.question_collator
    samples = [
        {"id": str(i), "image": image, "conversations": [{"from": "human", "value": f"<image>\n{question}"}]}
        for i, (image, question) in enumerate(zip(images, QUESTIONS))
    ]
    batch = collate(samples)
    generations = []
    generate = module.hf.generate

    def counting_generate(**inputs):
        generations.append((inputs["inputs_embeds"].shape[0], inputs["max_new_tokens"]))
        return generate(**inputs)

    module.hf.generate = counting_generate
    with torch.no_grad():
        seen = module.pathway(batch, padding_side="left")
        both = DualMLP.forward(module.strategy, seen.visual, seen.sinks, partial(module.family.project, module.hf))
    cap = hand_counted_cap(module.processor.tokenizer)
    assert generations == [(6, cap)]  # one generation, two rows per image, capped at the longest label
    # The old path by hand: each question about each image alone, with the same cap.
    image_prompt, question_prompt = routing_prompts["image_prompt"], routing_prompts["question_prompt"]
    alone = [
        [module.ask(batch, seen.visual, [prompt], [i], both, cap)[0] for i, prompt in enumerate(prompts)]
        for prompts in ([image_prompt] * 3, [question_prompt.replace("{question}", q) for q in QUESTIONS])
    ]
    decisions = seen.routed.decisions
    assert [d["image_answer"] for d in decisions] == alone[0]
    assert [d["question_answer"] for d in decisions] == alone[1]
    assert any(answer for answers in alone for answer in answers), "the tiny model must say something"


def test_each_image_of_a_repeated_selection_keeps_its_own_tokens(images, routing_prompts, planted_family_module):
    """Qwen3-VL: grid (M-RoPE) and DeepStack features follow each repeated image; asking about images [1, 0, 1]
    equals asking about image 1, then 0, then 1 in three batches of one."""
    module = planted_family_module("qwen3_vl", 3, CotRoute(**routing_prompts)).eval()
    collate = module.question_collator
    samples = [
        {"id": str(i), "image": image, "conversations": [{"from": "human", "value": "<image>\nQ?"}]}
        for i, image in enumerate(images[:2])
    ]
    batch = collate(samples)
    with torch.no_grad():
        visual = module.visual(batch)
        sinks = module.family.token_sinks(module.detector, visual)
        routed = DualMLP.forward(module.strategy, visual, sinks, partial(module.family.project, module.hf))
        together = module.ask(batch, visual, ["a?", "b?", "c?"], [1, 0, 1], routed, 5)
        alone = [module.ask(batch, visual, [q], [i], routed, 5)[0] for q, i in zip(["a?", "b?", "c?"], [1, 0, 1])]
    assert together == alone
    image_inputs, shown = module.family.select_images(batch, visual, [1, 0, 1])
    assert image_inputs["image_grid_thw"].tolist() == batch["image_grid_thw"][[1, 0, 1]].tolist()
    assert shown.lengths == [visual.lengths[1], visual.lengths[0], visual.lengths[1]]
    for level, chosen in zip(visual.extras["deepstack"], shown.extras["deepstack"]):
        assert [t is level[i] for t, i in zip(chosen, [1, 0, 1])] == [True] * 3


def test_the_auto_cap_is_the_fewest_tokens_that_parse_to_every_label():
    """Each label alone, or after a space that a tokenizer may write as a token of its own; an answer is read once a
    keyword of its label is out ('real' of 'real-world')."""

    class Words:  # one token per word piece split at '-', one for a leading space
        def __call__(self, text, add_special_tokens=False):
            self.pieces = ([" "] if text.startswith(" ") else []) + text.strip().replace("-", " - ").split()
            return {"input_ids": list(range(len(self.pieces)))}

        def decode(self, ids):
            return "".join(self.pieces[i] for i in ids)

    assert answer_tokens(Words()) == 2  # " real-world": the space, then "real" parses as real-world
    assert answer_tokens(Words(), ["global", "local"]) == 2
    assert answer_tokens(Words(), ["symbolic"]) == 2
    assert answer_tokens(build_tokenizer(1024), ["symbolic", "real-world", "global", "local"]) == 1


def test_the_configured_cap_overrides_the_auto_one_and_bad_input_is_named(
    images, routing_prompts, planted_family_module
):
    module = planted_family_module("llava", 3, CotRoute(**routing_prompts, max_new_tokens=3)).eval()
    batch = module.question_collator(
        [{"id": "0", "image": images[0], "conversations": [{"from": "human", "value": "<image>\nQ?"}]}]
    )
    caps = []
    generate = module.hf.generate
    module.hf.generate = lambda **inputs: caps.append(inputs["max_new_tokens"]) or generate(**inputs)
    with torch.no_grad():
        module.pathway(batch, padding_side="left")
    assert caps == [3]
    with torch.no_grad():
        visual = module.visual(batch)
        routed = Routed([torch.zeros(16, 8)], [torch.arange(16)])
        with pytest.raises(IndexError, match=r"image indices \[1\] name no image of a batch of 1"):
            module.ask(batch, visual, ["a?"], [1], routed, 3)
        with pytest.raises(ValueError, match="2 questions for 1 images to ask about"):
            module.ask(batch, visual, ["a?", "b?"], [0], routed, 3)
        with pytest.raises(ValueError, match="max_new_tokens=None caps answers at the longest expected answer"):
            module.ask(batch, visual, ["a?"], [0], routed, None)


def test_features_with_family_extras_are_selected_by_their_family_or_refused():
    visual = VisualFeatures(torch.zeros(2, 4, 3), extras={"private": [1, 2]})
    with pytest.raises(ValueError, match=r"carry family extras \['private'\]: select them with the family"):
        visual.select([1, 0])
    with pytest.raises(NotImplementedError, match=r"LlavaFamily keeps extras \['private'\] but does not select them"):
        LlavaFamily().select_images({}, visual, [1, 0])
    chosen = VisualFeatures(torch.arange(8.0).view(2, 4, 1), keys=["a", "b"]).select([1, 1, 0])
    assert chosen.keys == ["b", "b", "a"] and chosen.features[:, 0, 0].tolist() == [4.0, 4.0, 0.0]


def test_equal_visual_inputs_share_a_key_and_only_equal_ones():
    a, b = torch.arange(6.0).view(3, 2), torch.ones(3, 2)
    keys = [content_key(t) for t in (a, b, a.clone(), a + 1e-6, torch.arange(6.0).view(2, 3))]
    assert keys[0] == keys[2] and len({keys[0], keys[1], keys[3], keys[4]}) == 4
