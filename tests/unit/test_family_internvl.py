"""InternVL3 through sinkflow's pathway: tiles folded by the pixel shuffle, parity with plain transformers, routing
across an image's tiles against hand-permuted inputs."""

import math

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from transformers import InternVLProcessor

from sinkflow.models.build import LoraSpec, prepare_for_training, unwrap
from sinkflow.models.families.internvl import InternVLFamily
from sinkflow.models.tiled_processors import InternVLImages
from sinkflow.models.tiny_internvl import TinyInternVLSpec, build_tiny_internvl, ensure_tiny_internvl
from sinkflow.sinks.detectors.topk import TopK


@pytest.fixture(scope="module")
def pair(tmp_path_factory, loaded_pair):
    """A tiny InternVL3 checkpoint loaded through sinkflow (with its family) and through plain transformers."""
    return loaded_pair(ensure_tiny_internvl(tmp_path_factory.mktemp("internvl"), seed=2), InternVLFamily())


@pytest.fixture(scope="module")
def two_sizes(noise_images):
    """conftest's two sizes in seeded noise (`noise_images`): a 64 px square (4 crops + a thumbnail = 5 tiles) and a
    48 x 32 image (2 crops + a thumbnail = 3 tiles)."""
    return noise_images([(64, 64), (48, 32)])


def hf_processor(processor: InternVLImages, monkeypatch) -> InternVLProcessor:
    """transformers' InternVLProcessor on the same tokenizer and image processor; its video processor needs
    torchvision (absent here), so it is built without one, ProcessorMixin's class check skipped for it."""
    check = transformers.ProcessorMixin.check_argument_for_proper_class
    monkeypatch.setattr(
        transformers.ProcessorMixin,
        "check_argument_for_proper_class",
        lambda self, name, argument: None if argument is None else check(self, name, argument),
    )
    return InternVLProcessor(
        image_processor=processor.image_processor,
        tokenizer=processor.tokenizer,
        video_processor=None,
        image_seq_length=processor.image_seq_length,
        chat_template=processor.chat_template,
    )


def test_none_equals_transformers_logits_and_generation(pair, two_sizes, assert_parity, monkeypatch, question_batch):
    """Images of 5 and 3 tiles in one batch: the processor's own expansion and tiles, the same logits and greedy
    text."""
    module, reference = pair
    batch = question_batch(module, two_sizes)
    expected = hf_processor(module.processor, monkeypatch)(
        images=[Image.open(p).convert("RGB") for p in two_sizes],
        text=[meta["prompt"] for meta in batch["meta"]],
        return_tensors="pt",
        padding=True,
        padding_side="left",
    )
    assert batch["num_patches"].tolist() == [5, 3]
    for key in ("input_ids", "attention_mask", "pixel_values"):
        assert torch.equal(batch[key], expected[key]), key
    assert (batch["input_ids"] == reference.config.image_token_id).sum(dim=1).tolist() == [20, 12]
    assert (batch["attention_mask"] == 0).any(), "the batch must exercise padding"
    assert_parity(module, reference, batch, dict(expected))


def test_features_are_the_tiles_patches_in_window_order_and_fold_as_transformers_does(pair, two_sizes, question_batch):
    """Per-patch states (CLS dropped) of every tile, each 2 x 2 window's patches consecutive: their concatenation is
    transformers' pixel shuffle, and the projected tokens are its image features, to the bit."""
    module, reference = pair
    batch = question_batch(module, two_sizes)
    with torch.no_grad():
        visual = module.family.encode(module.hf, batch)
        states = reference.model.vision_tower(pixel_values=batch["pixel_values"]).last_hidden_state[:, 1:]
        side = math.isqrt(states.shape[1])
        shuffled = reference.model.pixel_shuffle(states.reshape(len(states), side, side, -1))
        theirs = reference.model.get_image_features(batch["pixel_values"]).pooler_output
        ours = module.family.project(module.hf, visual)
    assert visual.group == 4 and visual.lengths == [80, 48] and visual.slots == [20, 12]
    assert [ids.tolist() for ids in visual.tiles] == [sorted(list(range(5)) * 16), sorted(list(range(3)) * 16)]
    windows = visual.token_features()
    assert torch.equal(torch.cat([windows[0, :20], windows[1, :12]]), shuffled.reshape(-1, shuffled.shape[-1]))
    # Window (0, 0) of the first tile holds raster patches 0, 1, 4, 5 of its 4 x 4 grid.
    assert torch.equal(visual.features[0, :4], states[0, [0, 1, 4, 5]])
    assert torch.equal(torch.cat(ours), theirs.reshape(-1, theirs.shape[-1]))
    assert visual.tile_keys() == []  # keys come from the batch (module.visual); tiles name them per image
    keyed = type(visual)(visual.features, visual.lengths, visual.group, keys=["a", "b"], tiles=visual.tiles)
    assert keyed.tile_keys() == ["a@0", "a@1", "a@2", "a@3", "a@4", "b@0", "b@1", "b@2"]


def test_sinks_are_detected_per_tile():
    """TopK(k) marks k patches in every tile, not k in the image: each tile ran through the ViT alone."""
    model, processor = build_tiny_internvl(TinyInternVLSpec(seed=1))
    image = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    batch = dict(processor.image_processor([Image.fromarray(image)], return_tensors="pt"))
    with torch.no_grad():
        visual = InternVLFamily().encode(model, batch)
    patches = visual.patch_sinks(TopK(k=2))
    assert [int(patches[0, visual.tiles[0] == t].sum()) for t in range(5)] == [2] * 5


def hand_routed_logits(reference, batch, place: str, position_mode: str, sink_order, keep_positions, k: int = 3):
    """Plain transformers: every image's folded tokens holding a tile's k highest-norm patches moved to `place`, across
    the image's tiles (one placeholder block), 1-D positions permuted by hand for `original`."""
    with torch.no_grad():
        states = reference.model.vision_tower(pixel_values=batch["pixel_values"]).last_hidden_state[:, 1:]
        side = math.isqrt(states.shape[1])
        per_tile = (side // 2) ** 2
        tokens = reference.model.get_image_features(batch["pixel_values"]).pooler_output
        orders, first = [], 0
        for n_tiles in batch["num_patches"].tolist():
            sinks = set()
            for tile in range(n_tiles):
                for patch in torch.topk(states[first + tile].norm(dim=-1), k).indices.tolist():
                    row, col = divmod(patch, side)
                    sinks.add(tile * per_tile + (row // 2) * (side // 2) + col // 2)
            orders.append(sink_order(sorted(sinks), n_tiles * per_tile, place))
            first += n_tiles
        images = tokens.reshape(-1, per_tile, tokens.shape[-1]).split(batch["num_patches"].tolist())
        routed = torch.cat([image.reshape(-1, image.shape[-1])[order] for image, order in zip(images, orders)])
        ids, mask = batch["input_ids"], batch["attention_mask"]
        placeholders = ids == reference.config.image_token_id
        embeds = reference.get_input_embeddings()(ids).masked_scatter(placeholders.unsqueeze(-1), routed)
        assert any(not torch.equal(order, torch.arange(len(order))) for order in orders), "a real permutation"
        positions = None
        if position_mode == "original":
            positions = (mask.long().cumsum(-1) - 1).clamp_min(0)
            keep_positions(positions, placeholders, orders)
        return reference(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits


@pytest.mark.parametrize("position_mode", ["contiguous", "original"])
@pytest.mark.parametrize("place", ["front", "end"])
def test_sink_front_and_end_equal_transformers_with_permuted_tokens_and_positions(
    pair, two_sizes, place, position_mode, rerouted_logits, sink_order, keep_positions
):
    module, reference = pair
    ours, batch = rerouted_logits(module, place, position_mode, two_sizes)
    theirs = hand_routed_logits(reference, batch, place, position_mode, sink_order, keep_positions)
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(ours[mask], theirs[mask], atol=1e-5, rtol=0)


def test_an_earlier_feature_layer_and_the_options_are_checked(pair, two_sizes, question_batch):
    module, _ = pair
    batch = question_batch(module, two_sizes[:1])
    family = InternVLFamily(vision_feature_layer=-2)
    with torch.no_grad():
        hidden = module.family.vision_tower(module.hf)(batch["pixel_values"], output_hidden_states=True).hidden_states
        visual = family.encode(module.hf, batch)
    assert torch.equal(visual.features[0, :4], hidden[-2][0, 1:][[0, 1, 4, 5]])
    assert (family.feature_block(module.hf), module.family.feature_block(module.hf)) == (1, 2)
    assert len(family.vision_attentions(module.hf)) == 3
    with pytest.raises(ValueError, match="`model.family.sink_tokens` must be one of"):
        InternVLFamily(sink_tokens="mean")
    with pytest.raises(NotImplementedError, match="^InternVLFamily does not map its ViT sequences"):
        family.attention_positions(module.hf, batch, visual, [17] * 5)


def test_the_processor_round_trips_and_tiles(tmp_path):
    """What save_pretrained writes, from_pretrained reads back: the chat template, the tokens per tile, tiling on."""
    _, processor = build_tiny_internvl(TinyInternVLSpec())
    processor.image_processor.crop_to_patches = False
    processor.save_pretrained(tmp_path)
    loaded = InternVLImages.from_pretrained(tmp_path)
    assert (loaded.image_seq_length, loaded.chat_template) == (4, processor.chat_template)
    assert loaded.image_processor.crop_to_patches and loaded.image_token == "<IMG_CONTEXT>"
    assert (
        loaded.replace_image_token({"num_patches": torch.tensor([3])}, 0) == "<img>" + "<IMG_CONTEXT>" * 12 + "</img>"
    )


def test_lora_on_the_language_model_only_and_the_projector_trains():
    model, _ = build_tiny_internvl(TinyInternVLSpec())
    model = prepare_for_training(model, InternVLFamily(), lora=LoraSpec(r=2, alpha=4))
    trainable = {n for n, p in unwrap(model).named_parameters() if p.requires_grad}
    lora = {n for n in trainable if "lora_" in n}
    assert lora and all(n.startswith("model.language_model.layers.") for n in lora)
    projector = {n for n, _ in unwrap(model).named_parameters() if n.startswith("model.multi_modal_projector.")}
    assert projector and trainable - lora == projector
