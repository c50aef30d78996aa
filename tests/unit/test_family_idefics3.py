"""Idefics3 and SmolVLM through sinkflow's pathway: crops and a global view folded by the pixel shuffle, parity with
plain transformers, and routing within each crop's placeholder run against hand-built inputs."""

import math

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import Idefics3Processor

from sinkflow.analysis import relevance
from sinkflow.models.build import LoraSpec, prepare_for_training, unwrap
from sinkflow.models.families.idefics3 import Idefics3Family, split_crops
from sinkflow.models.families.smolvlm import SmolVLMFamily
from sinkflow.models.tiny_idefics3 import TinyIdefics3Spec, build_tiny_idefics3, ensure_tiny_idefics3
from sinkflow.pathway import Routed, by_run
from sinkflow.sinks.strategies.drop_sinks import DropSinks

FAMILIES = {"idefics3": Idefics3Family, "smolvlm": SmolVLMFamily}
PER_CROP = 4  # 4 x 4 patches of a 32-px crop, folded 2 x 2


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def pair(request, tmp_path_factory, loaded_pair):
    """A tiny checkpoint loaded through sinkflow (with its family) and through plain transformers."""
    path = ensure_tiny_idefics3(tmp_path_factory.mktemp(request.param), variant=request.param, seed=2)
    return loaded_pair(path, FAMILIES[request.param]())


@pytest.fixture(scope="module")
def two_sizes(noise_images):
    """Two sizes in seeded noise (`noise_images`): a 64 px square (2 x 2 crops + the global view) and a 64 x 24 image
    (1 x 2 crops + the global view)."""
    return noise_images([(64, 64), (64, 24)])


def real_crops(values: torch.Tensor) -> torch.Tensor:
    """The crops of a [rows, crops, ...] tensor that are not padding (all zero)."""
    flat = values.flatten(0, 1)
    return flat[flat.flatten(1).ne(0).any(dim=1)]


def test_none_equals_transformers_logits_and_generation(pair, two_sizes, assert_parity, question_batch):
    """Images of 5 and 3 crops in one batch: transformers' own prompt expansion (crop tags as text), the same crops,
    the same logits and greedy text (transformers fed its processor's per-prompt crop layout)."""
    module, reference = pair
    batch = question_batch(module, two_sizes)
    processor = module.processor
    assert isinstance(processor, Idefics3Processor) and processor.image_processor.return_row_col_info
    expected = processor(
        images=[Image.open(p).convert("RGB") for p in two_sizes],
        text=[meta["prompt"] for meta in batch["meta"]],
        return_tensors="pt",
        padding=True,
        padding_side="left",
    )
    for key in ("input_ids", "attention_mask"):
        assert torch.equal(batch[key], expected[key]), key
    for key in ("pixel_values", "pixel_attention_mask"):
        assert torch.equal(real_crops(batch[key]), real_crops(expected[key])), key
    assert (batch["rows"], batch["cols"]) == ([[2, 1]], [[2, 2]])
    prompt = processor.tokenizer.decode(batch["input_ids"][1], skip_special_tokens=False)
    assert "<row_1_col_2><image><image><image><image>\n\n<fake_token_around_image><global-img>" in prompt
    assert (batch["input_ids"] == reference.config.image_token_id).sum(dim=1).tolist() == [20, 12]
    assert (batch["attention_mask"] == 0).any(), "the batch must exercise padding"
    assert_parity(module, reference, batch, dict(expected))


def test_features_are_the_crops_patches_in_window_order_and_fold_as_the_connector_does(pair, two_sizes, question_batch):
    module, reference = pair
    batch = question_batch(module, two_sizes)
    with torch.no_grad():
        visual = module.family.encode(module.hf, batch)
        out = reference.model.get_image_features(batch["pixel_values"], batch["pixel_attention_mask"])
        shuffled = reference.model.connector.pixel_shuffle(out.last_hidden_state, reference.config.scale_factor)
        ours = module.family.project(module.hf, visual)
    assert visual.group == 4 and visual.slots == [20, 12] and visual.runs == [[PER_CROP] * 5, [PER_CROP] * 3]
    assert [len(ids.unique()) for ids in visual.tiles] == [5, 3]
    windows = visual.token_features()
    assert torch.equal(torch.cat([windows[0, :20], windows[1, :12]]), shuffled.reshape(-1, shuffled.shape[-1]))
    assert torch.equal(visual.features[0, :4], out.last_hidden_state[0, [0, 1, 4, 5]])
    assert torch.equal(torch.cat(ours), torch.cat(out.pooler_output))


def crop_sinks(reference, batch, k: int) -> list[list[torch.Tensor]]:
    """Per image, per crop: the folded tokens (0 .. PER_CROP - 1) holding the crop's k highest-norm patches."""
    with torch.no_grad():
        states = reference.model.get_image_features(batch["pixel_values"]).last_hidden_state
    side = math.isqrt(states.shape[1])
    crops = [rows * cols + 1 for rows, cols in zip(batch["rows"][0], batch["cols"][0])]
    per_crop = []
    for state in states:
        patches = torch.topk(state.norm(dim=-1), k).indices.tolist()
        per_crop.append(torch.tensor(sorted({(p // side // 2) * (side // 2) + (p % side) // 2 for p in patches})))
    bounds = np.cumsum([0, *crops]).tolist()
    return [per_crop[start:end] for start, end in zip(bounds[:-1], bounds[1:])]


def reference_embeddings(reference, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain transformers' merged embeddings of the unrouted batch, and each image's image-token tokens."""
    with torch.no_grad():
        tokens = reference.model.get_image_features(batch["pixel_values"]).pooler_output[0]
        placeholders = batch["input_ids"] == reference.config.image_token_id
        embeds = reference.get_input_embeddings()(batch["input_ids"])
    return embeds, tokens.split((placeholders.sum(dim=1)).tolist())


@pytest.mark.parametrize("position_mode", ["contiguous", "original"])
@pytest.mark.parametrize("place", ["front", "end"])
def test_sink_front_and_end_order_each_crop_run_as_transformers_fed_by_hand(
    pair, two_sizes, place, position_mode, rerouted_logits, sink_order, keep_positions
):
    """Every crop's run holds its own tokens, its sinks first (last); positions move with them for `original`."""
    module, reference = pair
    ours, batch = rerouted_logits(module, place, position_mode, two_sizes)
    embeds, images = reference_embeddings(reference, batch)
    orders = [
        torch.cat([c * PER_CROP + sink_order(sinks.tolist(), PER_CROP, place) for c, sinks in enumerate(crops)])
        for crops in crop_sinks(reference, batch, k=3)
    ]
    assert any(not torch.equal(order, torch.arange(len(order))) for order in orders), "a real permutation"
    mask, placeholders = batch["attention_mask"], batch["input_ids"] == reference.config.image_token_id
    tokens = torch.cat([image[order] for image, order in zip(images, orders)])
    embeds = embeds.masked_scatter(placeholders.unsqueeze(-1), tokens)
    positions = None
    if position_mode == "original":
        positions = (mask.long().cumsum(-1) - 1).clamp_min(0)
        keep_positions(positions, placeholders, orders)
    with torch.no_grad():
        theirs = reference(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits
    torch.testing.assert_close(ours[mask.bool()], theirs[mask.bool()], atol=1e-5, rtol=0)


def test_drop_sinks_shortens_each_crop_run_by_its_own_sinks(pair, two_sizes, question_batch, rerouted):
    """The rebuilt rows are the unrouted ones without each crop's sink columns: every crop tag still precedes its
    own crop's remaining tokens, and plain transformers fed those rows gives the same logits."""
    module, reference = pair
    routed = rerouted(module, DropSinks(), k=2)
    batch = question_batch(module, two_sizes)
    with torch.no_grad():
        inputs = routed.pathway(batch).inputs
        ours = routed.hf(**inputs).logits
    embeds, images = reference_embeddings(reference, batch)
    placeholders = batch["input_ids"] == reference.config.image_token_id
    embeds = embeds.masked_scatter(placeholders.unsqueeze(-1), torch.cat(images))
    rows, masks = [], []
    for row, crops in enumerate(crop_sinks(reference, batch, k=2)):
        block = placeholders[row].nonzero().squeeze(1)
        dropped = torch.cat([block[c * PER_CROP + sinks] for c, sinks in enumerate(crops)])
        keep = torch.ones(len(embeds[row]), dtype=torch.bool)
        keep[dropped] = False
        rows.append(embeds[row, keep])
        masks.append(batch["attention_mask"][row, keep])
        assert int((inputs["attention_mask"][row] == 1).sum()) == int(masks[-1].sum())
    length = max(len(r) for r in rows)
    hand = torch.stack([torch.cat([r, r.new_zeros(length - len(r), r.shape[-1])]) for r in rows])
    mask = torch.stack([torch.cat([m, m.new_zeros(length - len(m))]) for m in masks])
    torch.testing.assert_close(inputs["inputs_embeds"], hand, atol=0, rtol=0)
    assert torch.equal(inputs["attention_mask"], mask)
    with torch.no_grad():
        theirs = reference(inputs_embeds=hand, attention_mask=mask).logits
    torch.testing.assert_close(ours[mask.bool()], theirs[mask.bool()], atol=1e-5, rtol=0)


def test_a_run_receives_its_own_tokens_in_routed_order():
    """`by_run`: an image routed as [5, 1, 3, 0] over runs of 2 + 4 slots: run 0 gets 1, 0; run 1 gets 5, 3."""
    tokens = torch.arange(4.0)[:, None]  # token i came from slot sources[i]
    routed = Routed([tokens], [torch.tensor([5, 1, 3, 0])], decisions=[{"route": "both"}])
    runs, sizes = by_run(routed, [[2, 4]])
    assert sizes == [2, 4] and runs.decisions is None
    assert [s.tolist() for s in runs.sources] == [[1, 0], [3, 1]]
    assert [t.flatten().tolist() for t in runs.tokens] == [[1.0, 3.0], [0.0, 2.0]]


@pytest.mark.parametrize("block", [0, 2])
def test_relevance_columns_equal_eager_attention_on_the_crops_side_by_side(two_sizes, block):
    """A target's map is its crop's eager attention column, in that crop's place on the image's crop grid (zero on
    the other crops, which never attend to it); a global-view target has no cell and an empty map on that grid."""
    model, processor = build_tiny_idefics3(TinyIdefics3Spec(seed=2))
    images = [Image.open(path).convert("RGB") for path in two_sizes]
    batch = dict(processor.image_processor(images, return_tensors="pt"))  # 2 x 2 + 1 and 1 x 2 + 1 crops
    family = Idefics3Family()
    captured = relevance.capture(model, family, batch, block)
    model.set_attn_implementation("eager")
    pixels, _, _ = split_crops(batch)
    with torch.no_grad():
        attentions = family.vision_tower(model)(pixel_values=pixels, output_attentions=True).attentions[block]
    order = [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]  # raster patch of each window position
    assert captured.grids[0].shape == (8, 8) and captured.grids[1].shape == (4, 8)
    for crop, window in [(0, 5), (1, 13)]:  # image 1's crops are crops 5 and 6 of the batch
        feature, patch = crop * 16 + window, order[window]
        expected = torch.zeros(attentions.shape[1], 4, 8)
        expected[:, :, 4 * crop : 4 * crop + 4] = attentions[5 + crop, :, :, patch].reshape(-1, 4, 4)
        torch.testing.assert_close(captured.column(1, feature), expected, atol=1e-6, rtol=0)
        assert captured.cell(1, feature) == (patch // 4, 4 * crop + patch % 4)
    global_view = 2 * 16
    assert captured.cell(1, global_view) is None and not captured.column(1, global_view).any()
    drawn = family.seen_images(batch, processor)
    assert [tuple(image.shape) for image in drawn] == [(64, 64, 3), (32, 64, 3)]


def test_a_batch_without_crop_grids_is_refused_by_name():
    model, processor = build_tiny_idefics3(TinyIdefics3Spec())
    batch = dict(processor.image_processor([Image.new("RGB", (64, 64))], return_tensors="pt"))
    del batch["rows"]
    with pytest.raises(ValueError, match=r"no `rows` / `cols` per image: .* \(return_row_col_info\)"):
        Idefics3Family().encode(model, batch)


@pytest.mark.parametrize("variant", sorted(FAMILIES))
def test_the_processor_loads_from_a_checkpoint_as_idefics3s(variant, tmp_path):
    """SmolVLM's own processor needs num2words and torchvision: both families load Idefics3Processor on the
    checkpoint's files, with its tokens per crop, its chat template and the crop grids returned."""
    model, processor = build_tiny_idefics3(TinyIdefics3Spec(variant=variant))
    processor.save_pretrained(tmp_path)
    loaded = FAMILIES[variant]().load_processor(str(tmp_path))
    assert type(loaded) is Idefics3Processor and loaded.image_seq_len == PER_CROP
    assert loaded.chat_template == processor.chat_template and loaded.image_processor.return_row_col_info
    assert type(loaded.image_processor).__name__.startswith({"idefics3": "Idefics3", "smolvlm": "SmolVLM"}[variant])


def test_lora_on_the_language_model_only_and_the_connector_trains():
    model, _ = build_tiny_idefics3(TinyIdefics3Spec())
    model = prepare_for_training(model, Idefics3Family(), lora=LoraSpec(r=2, alpha=4))
    trainable = {n for n, p in unwrap(model).named_parameters() if p.requires_grad}
    lora = {n for n in trainable if "lora_" in n}
    assert lora and all(n.startswith("model.text_model.layers.") for n in lora)
    assert trainable - lora == {"model.connector.modality_projection.proj.weight"}
