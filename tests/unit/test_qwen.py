"""Qwen2-VL and Qwen2.5-VL through sinkflow's pathway: parity with plain transformers, routing with M-RoPE."""

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText

from sinkflow.data.collate import Collator
from sinkflow.data.templates import ProcessorChatTemplate
from sinkflow.models.build import load_pretrained
from sinkflow.models.families.qwen2_5_vl import Qwen25VLFamily
from sinkflow.models.families.qwen2_vl import Qwen2VLFamily
from sinkflow.models.tiny_qwen import ensure_tiny_qwen
from sinkflow.module import SinkflowModule
from sinkflow.sinks.strategies.none import NoneStrategy

FAMILIES = {"qwen2_vl": Qwen2VLFamily, "qwen2_5_vl": Qwen25VLFamily}
QUESTIONS = ["What is the background color?", "How many shapes are there in this picture? Count them."]


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def pair(request, tmp_path_factory):
    """A tiny Qwen checkpoint loaded through sinkflow (with its family) and through plain transformers."""
    path = ensure_tiny_qwen(tmp_path_factory.mktemp("qwen"), variant=request.param, seed=2)
    family = FAMILIES[request.param]()
    model, processor = load_pretrained(path, family=family)
    reference = AutoModelForImageTextToText.from_pretrained(path).eval()
    return SinkflowModule(model.eval(), processor, family, NoneStrategy()).eval(), reference


@pytest.fixture(scope="module")
def two_sizes(shapes_root, tmp_path_factory):
    """Two images of different sizes (64x64 -> 16 merged tokens, 48x32 -> 6)."""
    folder = tmp_path_factory.mktemp("sizes")
    paths = []
    for i, size in enumerate([(64, 64), (48, 32)]):
        image = Image.open(shapes_root / "eval_images" / f"eval_{i:05d}.png").convert("RGB").resize(size)
        paths.append(str(folder / f"{i}.png"))
        image.save(paths[-1])
    return paths


def samples(images):
    return [{"id": str(i), "image": image, "conversations": [{"from": "human", "value": "<image>\n" + q}]}
            for i, (image, q) in enumerate(zip(images, QUESTIONS))]


def reference_inputs(model, batch):
    keys = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")
    return {**{k: batch[k] for k in keys},
            "mm_token_type_ids": (batch["input_ids"] == model.config.image_token_id).int()}


def test_none_equals_transformers_logits_and_generation(pair, two_sizes):
    module, reference = pair
    batch = Collator(module.processor, ProcessorChatTemplate(), generate=True)(samples(two_sizes))
    assert batch["image_grid_thw"].tolist() == [[1, 8, 8], [1, 4, 6]]
    assert (batch["attention_mask"] == 0).any(), "the batch must exercise padding"
    assert (batch["input_ids"] == reference.config.image_token_id).sum(dim=1).tolist() == [16, 6]
    expected = reference_inputs(reference, batch)
    with torch.no_grad():
        ours = module(batch).logits
        theirs = reference(**expected).logits
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(ours[mask], theirs[mask], atol=1e-5, rtol=0)

    generated = module.generate(batch)
    with torch.no_grad():
        ids = reference.generate(**expected, max_new_tokens=module.generation.max_new_tokens, do_sample=False)
    assert generated == module.processor.tokenizer.batch_decode(ids[:, batch["input_ids"].shape[1]:],
                                                                skip_special_tokens=True)
