"""Parity first: with sink_strategy=none, sinkflow reproduces plain transformers exactly (logits and greedy text)."""

import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

from sinkflow.data.collate import Collator
from sinkflow.data.templates import VicunaV1
from sinkflow.models.build import load_pretrained
from sinkflow.models.families.llava import LlavaFamily
from sinkflow.module import SinkflowModule
from sinkflow.sinks.strategies.none import NoneStrategy

QUESTIONS = ["What is the background color?", "How many shapes are there in this picture? Count them carefully."]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A tiny LLaVA saved to a temp dir, loaded once through sinkflow and once through plain transformers."""
    from sinkflow.models.tiny import TinyLlavaSpec, build_tiny_llava

    model, processor = build_tiny_llava(TinyLlavaSpec(seed=3))
    path = tmp_path_factory.mktemp("ckpt")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    ours, our_processor = load_pretrained(path)
    module = SinkflowModule(ours, our_processor, LlavaFamily(), NoneStrategy()).eval()
    reference = LlavaForConditionalGeneration.from_pretrained(path).eval()
    return module, reference, AutoProcessor.from_pretrained(path)


def test_logits_and_generation_match_transformers(pair, shapes_root, assert_parity):
    module, reference, processor = pair
    images = [str(shapes_root / "eval_images" / f"eval_0000{i}.png") for i in range(2)]
    samples = [
        {"id": str(i), "image": img, "conversations": [{"from": "human", "value": "<image>\n" + q}]}
        for i, (img, q) in enumerate(zip(images, QUESTIONS))
    ]
    batch = Collator(module.processor, VicunaV1(), generate=True)(samples)
    texts = [meta["prompt"] for meta in batch["meta"]]
    expected = processor(
        images=[Image.open(p).convert("RGB") for p in images],
        text=texts,
        return_tensors="pt",
        padding=True,
        padding_side="left",
    )
    assert torch.equal(batch["input_ids"], expected["input_ids"])
    assert (batch["attention_mask"] == 0).any(), "the batch must exercise padding"

    assert_parity(module, reference, batch, expected)


def test_vision_feature_layer_override_changes_features(pair, image_path):
    """The family honours the config's feature layer by default and an explicit override otherwise."""
    module, reference, processor = pair
    pixels = processor.image_processor([Image.open(image_path).convert("RGB")], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        hidden = reference.model.vision_tower(pixels, output_hidden_states=True).hidden_states
        default = LlavaFamily().encode(module.hf, {"pixel_values": pixels})
        last = LlavaFamily(vision_feature_layer=-1, vision_feature_select_strategy="full").encode(
            module.hf, {"pixel_values": pixels}
        )
    torch.testing.assert_close(default.features, hidden[-2][:, 1:], atol=0, rtol=0)
    torch.testing.assert_close(last.features, hidden[-1], atol=0, rtol=0)
    assert default.slots == [16] and default.group == 1
