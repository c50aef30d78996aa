"""Padding-free packing (dataset.packing=true, sinkflow.models.packing): on every family, a training batch packed
into shared rows gives the loss and the gradients of the same batch unpacked; samples never see each other."""

import pytest
import torch

from sinkflow.data.collate import Collator
from sinkflow.interventions.pai import Pai
from sinkflow.models.build import LoraSpec, prepare_for_training
from sinkflow.models.families.base import FAMILIES
from sinkflow.models.packing import bins, pack
from sinkflow.sinks.strategies.none import NoneStrategy
from sinkflow.sinks.strategies.sink_front import SinkFront

ANSWERS = [
    "there are two red circles and one blue square in the top left corner, on a green background, and a yellow "
    "triangle in the bottom right corner of the image; the circles touch each other, the square is smaller than "
    "either circle, and the triangle points up towards the square across the middle of the picture",
    "yes",
    "two",
    "a blue square",
]


@pytest.fixture(scope="module")
def images(resized_images):
    return resized_images([(64, 64), (48, 32), (32, 48), (64, 48)])


def samples(images):
    return [
        {
            "id": str(i),
            "image": image,
            "conversations": [{"from": "human", "value": "<image>\nWhat is there?"}, {"from": "gpt", "value": a}],
        }
        for i, (image, a) in enumerate(zip(images, ANSWERS))
    ]


def with_lora(model, family):
    torch.manual_seed(0)  # LoRA's A matrices draw from the global generator
    return prepare_for_training(model, family, lora=LoraSpec(r=2, alpha=4, dropout=0.0))


def test_bins_fill_rows_first_fit_decreasing_up_to_the_longest_sample():
    assert bins([10, 3, 4, 6, 2]) == [[0], [3, 2], [1, 4]]
    assert bins([10, 3, 4, 6, 2], capacity=16) == [[0, 1], [3, 2, 4]]  # two rows, balanced: 13 and 12
    assert bins([10, 3], capacity=4) == [[0], [1]]  # a row holds at least the longest sample
    assert bins([5]) == [[0]]
    assert sorted(sum(bins([7, 7, 7]), [])) == [0, 1, 2]


@pytest.mark.parametrize("family_name", FAMILIES.names())
def test_a_packed_batch_has_the_loss_and_gradients_of_the_batch_unpacked(family_name, images, planted_family_module):
    results = []
    for packing in (False, True):
        module = planted_family_module(family_name, 4, SinkFront(), with_lora)
        batch = Collator(module.processor, module.question_collator.template, pack=packing)(samples(images))
        shapes = []
        hook = module.hf.register_forward_pre_hook(
            lambda m, a, kw, shapes=shapes: shapes.append(kw["inputs_embeds"].shape[0]), with_kwargs=True
        )
        loss = module(batch).loss
        hook.remove()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
        results.append((loss.detach(), grads, shapes[0]))
    (plain, plain_grads, plain_rows), (packed, packed_grads, packed_rows) = results
    assert packed_rows < plain_rows == len(ANSWERS)  # the short samples share a row
    torch.testing.assert_close(packed, plain, atol=1e-5, rtol=1e-5)
    assert packed_grads.keys() == plain_grads.keys() and plain_grads
    for name, grad in plain_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_packed_samples_keep_their_own_positions_and_labels(images, planted_family_module):
    """Qwen2-VL: each packed sample's M-RoPE ids are those it had alone, its text positions count from 0, its first
    label is ignored; the row's padding is a sequence of its own."""
    module = planted_family_module("qwen2_vl", 4, SinkFront())
    batch = Collator(module.processor, module.question_collator.template)(samples(images))
    inputs = module.pathway(batch).inputs
    packed = pack(inputs)
    lengths = inputs["attention_mask"].sum(1).tolist()
    rows = bins(lengths)
    assert "attention_mask" not in packed and packed["position_ids"].shape == (4, len(rows), max(lengths))
    for r, members in enumerate(rows):
        start = 0
        for sample in members:
            n = lengths[sample]
            got = packed["position_ids"][:, r, start : start + n]
            torch.testing.assert_close(got[1:], inputs["position_ids"][1:, sample, :n])
            assert got[0].tolist() == list(range(n))
            torch.testing.assert_close(
                packed["inputs_embeds"][r, start : start + n], inputs["inputs_embeds"][sample, :n]
            )
            assert packed["labels"][r, start] == -100
            assert packed["labels"][r, start + 1 : start + n].tolist() == inputs["labels"][sample, 1:n].tolist()
            start += n
        assert (packed["labels"][r, start:] == -100).all()


def test_packing_refuses_what_it_cannot_lay_out(images, planted_family_module):
    module = planted_family_module("llava", 4, SinkFront())
    batch = Collator(module.processor, module.question_collator.template, pack=True)(samples(images))
    inputs = module.pathway(batch).inputs
    with pytest.raises(ValueError, match=r"cannot lay out the LLM inputs \['pixel_values'\]"):
        pack({**inputs, "pixel_values": torch.zeros(1)})
    with pytest.raises(ValueError, match="packs right-padded rows"):
        pack({**inputs, "attention_mask": inputs["attention_mask"].flip(1)})  # the padding first
    module.strategy = NoneStrategy(position_ids="original")  # rebuilt rows, positions still counting up by one
    with torch.no_grad():
        torch.testing.assert_close(module(batch).loss, module({**batch, "pack": None}).loss, atol=1e-5, rtol=1e-5)
    module.strategy = SinkFront(position_ids="original")  # the sinks keep their positions, out of order
    with pytest.raises(ValueError, match="route with sink_strategy.strategy.position_ids=contiguous"):
        module(batch)
    module.strategy = SinkFront()
    module.intervention = Pai()
    with pytest.raises(ValueError, match="intervention 'pai' reads one sample per row"):
        module(batch)
    with pytest.raises(ValueError, match="generation prompts are never packed"):
        Collator(module.processor, module.question_collator.template, generate=True, pack=True)
