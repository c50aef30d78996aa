"""Gemma 3 through sinkflow's pathway: parity with plain transformers, pooled tokens made of 4x4 patches, and the
bidirectional image-attention block following the routed tokens (docs/models.md#gemma-3)."""

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from sinkflow.analysis import relevance
from sinkflow.models.build import LoraSpec, prepare_for_training, unwrap
from sinkflow.models.families.gemma3 import Gemma3Family, generate_from_embeds
from sinkflow.models.tiny_gemma3 import TinyGemma3Spec, build_tiny_gemma3, ensure_tiny_gemma3
from sinkflow.pathway import VisualFeatures
from sinkflow.sinks.detectors.norm_threshold import NormThreshold
from sinkflow.sinks.strategies.drop_sinks import DropSinks


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    return ensure_tiny_gemma3(tmp_path_factory.mktemp("gemma3"), seed=2)


@pytest.fixture(scope="module")
def pair(checkpoint, loaded_pair):
    """The tiny Gemma 3 checkpoint loaded through sinkflow (with its family) and through plain transformers; it
    resizes both two_sizes images to its square (64 px -> 16 tokens each)."""
    return loaded_pair(checkpoint, Gemma3Family())


def test_none_equals_transformers_own_chat_template_logits_and_generation(
    pair, checkpoint, two_sizes, assert_parity, question_batch, questions
):
    """transformers' processor applies the chat template and tokenizes (one `<bos>`, the template's) with
    `token_type_ids`; sinkflow's batch is the same and so are the logits and the greedy text."""
    module, reference = pair
    batch = question_batch(module, two_sizes)
    conversations = [
        [
            {
                "role": "user",
                "content": [{"type": "image", "image": Image.open(path).convert("RGB")}, {"type": "text", "text": q}],
            }
        ]
        for path, q in zip(two_sizes, questions)
    ]
    expected = AutoProcessor.from_pretrained(checkpoint).apply_chat_template(
        conversations,
        tokenize=True,
        add_generation_prompt=True,
        return_dict=True,
        return_tensors="pt",
        padding=True,
        padding_side="left",
    )
    for key in ("input_ids", "attention_mask", "pixel_values"):
        assert torch.equal(batch[key], expected[key]), key
    bos = module.processor.tokenizer.bos_token_id
    assert [
        (row[mask.bool()] == bos).sum().item() for row, mask in zip(batch["input_ids"], batch["attention_mask"])
    ] == [1, 1]
    assert (batch["attention_mask"] == 0).any(), "the batch must exercise padding"
    assert expected["token_type_ids"].sum(dim=1).tolist() == [16, 16]
    assert_parity(module, reference, batch, dict(expected))


def reference_inputs(reference, batch) -> dict:
    image = batch["input_ids"] == reference.config.image_token_id
    return {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")} | {"token_type_ids": image.long()}


def test_the_bidirectional_image_block_matters(pair, two_sizes, question_batch):
    """Without `token_type_ids` transformers attends causally inside each image: the logits differ (so the parity
    above checks the mask, not only the embeddings)."""
    module, reference = pair
    batch = question_batch(module, two_sizes)
    inputs = reference_inputs(reference, batch)
    with torch.no_grad():
        bidirectional = reference(**inputs).logits
        causal = reference(**{k: v for k, v in inputs.items() if k != "token_type_ids"}).logits
    mask = batch["attention_mask"].bool()
    assert not torch.allclose(bidirectional[mask], causal[mask], atol=1e-3)


def hand_routed(reference, batch, k: int = 3):
    """Plain transformers' pieces for routing by hand: per image its pooled tokens and its sink tokens (those whose
    4x4 block holds one of the k highest-norm patches), with the unrouted embeddings and positions."""
    with torch.no_grad():
        out = reference.model.get_image_features(batch["pixel_values"])
    side = reference.model.multi_modal_projector.patches_per_image
    sinks = []
    for norms in out.last_hidden_state.norm(dim=-1):  # raster patches
        rows, cols = torch.topk(norms, k).indices // side, torch.topk(norms, k).indices % side
        sinks.append(sorted({int(r // 4 * (side // 4) + c // 4) for r, c in zip(rows, cols)}))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    return {
        "tokens": list(out.pooler_output),
        "sinks": sinks,
        "embeds": reference.get_input_embeddings()(ids).detach(),
        "positions": (mask.long().cumsum(-1) - 1).clamp_min(0),
        "placeholders": ids == reference.config.image_token_id,
    }


@pytest.mark.parametrize("position_mode", ["contiguous", "original"])
@pytest.mark.parametrize("place", ["front", "end"])
def test_sink_front_and_end_equal_transformers_with_permuted_tokens_and_the_image_mask(
    pair, two_sizes, place, position_mode, rerouted_logits, sink_order, keep_positions
):
    module, reference = pair
    ours, batch = rerouted_logits(module, place, position_mode, two_sizes)
    parts = hand_routed(reference, batch)
    orders = [sink_order(sinks, len(tokens), place) for sinks, tokens in zip(parts["sinks"], parts["tokens"])]
    assert any(not torch.equal(order, torch.arange(len(order))) for order in orders), "a real permutation"
    placeholders, positions = parts["placeholders"], parts["positions"].clone()
    tokens = torch.cat([tokens[order] for tokens, order in zip(parts["tokens"], orders)])
    embeds = parts["embeds"].masked_scatter(placeholders.unsqueeze(-1), tokens)
    if position_mode == "original":
        keep_positions(positions, placeholders, orders)
    inputs = {"inputs_embeds": embeds, "attention_mask": batch["attention_mask"], "position_ids": positions}
    with torch.no_grad():
        theirs = reference(**inputs, token_type_ids=placeholders.long()).logits
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(ours[mask], theirs[mask], atol=1e-5, rtol=0)


def test_drop_sinks_shrinks_the_bidirectional_block_with_the_image(pair, two_sizes, question_batch, rerouted):
    """Each row rebuilt by hand without its image's sink tokens, `token_type_ids` on the tokens left; the mask of the
    unshortened block (or none) would give other logits."""
    module, reference = pair
    routed = rerouted(module, DropSinks())
    for image in two_sizes:  # one image per batch: rows without padding, rebuilt by hand below
        batch = question_batch(module, [image])
        with torch.no_grad():
            ours = routed(batch).logits
        parts = hand_routed(reference, batch)
        sinks, n_tokens = parts["sinks"][0], len(parts["tokens"][0])
        kept = torch.tensor([t for t in range(n_tokens) if t not in sinks])
        block = parts["placeholders"][0].nonzero().squeeze(1)
        start, end = int(block[0]), int(block[-1]) + 1
        embeds = torch.cat([parts["embeds"][0, :start], parts["tokens"][0][kept], parts["embeds"][0, end:]])[None]
        positions = torch.arange(embeds.shape[1])[None]  # 1-D positions: the rebuilt row is numbered anew
        token_types = torch.zeros_like(positions)
        token_types[0, start : start + len(kept)] = 1
        inputs = {"inputs_embeds": embeds, "attention_mask": torch.ones_like(positions), "position_ids": positions}
        with torch.no_grad():
            theirs = reference(**inputs, token_type_ids=token_types).logits
            longer = token_types.clone()
            longer[0, start : start + n_tokens] = 1  # the block as long as before the drop
            stale = reference(**inputs, token_type_ids=longer).logits
        assert ours.shape == theirs.shape and len(kept) < n_tokens
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
        assert not torch.allclose(stale, theirs, atol=1e-3)


def test_each_tokens_16_patches_are_consecutive_and_project_restores_the_projectors_layout(
    pair, two_sizes, question_batch
):
    """The mean of each group of 16 features is the projector's average pool at that token, and projecting the
    features gives transformers' image features."""
    module, reference = pair
    batch = question_batch(module, two_sizes)
    projector = reference.model.multi_modal_projector
    with torch.no_grad():
        visual = module.family.encode(module.hf, batch)
        out = reference.model.get_image_features(batch["pixel_values"])
        raster = out.last_hidden_state.transpose(1, 2).reshape(2, -1, 16, 16)
        pooled = projector.avg_pool(raster).flatten(2).transpose(1, 2)
        projected = module.family.project(module.hf, visual)
    assert visual.group == 16 and visual.slots == [16, 16]
    means = visual.features.view(2, 16, 16, -1).mean(dim=2)
    torch.testing.assert_close(means, pooled, atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.stack(projected), out.pooler_output, atol=0, rtol=0)


def test_a_pooled_token_is_a_sink_if_any_of_its_16_patches_is_or_by_their_joint_norm():
    features = torch.ones(1, 32, 4)
    features[0, 3] = 200.0  # one sink patch in token 0
    features[0, 16:32] = 30.0  # token 1: no patch above tau = 100, together 16 x (4 x 30^2) = 240^2
    visual = VisualFeatures(features, group=16)
    detector = NormThreshold(tau=100.0)
    assert Gemma3Family().token_sinks(detector, visual).tolist() == [[True, False]]
    assert Gemma3Family(sink_tokens="own_norm").token_sinks(detector, visual).tolist() == [[True, True]]
    with pytest.raises(ValueError, match="`model.family.sink_tokens` must be one of"):
        Gemma3Family(sink_tokens="mean")


def test_patch_pixels_follow_the_features_order(pair, two_sizes, question_batch):
    module, _ = pair
    batch = question_batch(module, two_sizes)
    with torch.no_grad():
        visual = module.family.encode(module.hf, batch)
    pixels = module.family.patch_pixels(batch, visual)
    assert pixels.shape == (2, 256, 3 * 4 * 4)
    # Feature 16 is token 1's first patch: patch row 0, column 4 of the 16 x 16 grid.
    expected = batch["pixel_values"][0, :, 0:4, 16:20].reshape(-1)
    assert torch.equal(pixels[0, 16], expected)


def test_pan_and_scan_crops_are_refused(pair, two_sizes, question_batch):
    module, _ = pair
    batch = question_batch(module, two_sizes)
    with pytest.raises(ValueError, match="pan-and-scan crops are not supported .* set the image processor's do_pan"):
        module.family.encode(module.hf, {**batch, "num_crops": torch.tensor([0, 2])})


def test_the_tokenizer_adds_no_second_bos_and_answers_stop_at_the_turn_end(checkpoint):
    """As loaded for sinkflow; transformers' own tokenizer of the checkpoint adds a `<bos>` the template also
    writes."""
    tokenizer = Gemma3Family().load_processor(checkpoint).tokenizer
    assert tokenizer("<bos>hi").input_ids.count(tokenizer.bos_token_id) == 1
    assert tokenizer.eos_token == "<end_of_turn>"
    plain = AutoProcessor.from_pretrained(checkpoint).tokenizer
    assert plain("<bos>hi").input_ids.count(plain.bos_token_id) == 2


def test_generate_takes_inputs_embeds_only_through_the_workaround(checkpoint):
    """transformers 5.23 refuses `inputs_embeds` in Gemma 3's generate (a signature check); once the instance names
    them, generating from the embeddings equals generating from the ids. When transformers lifts the check, this
    test says the workaround can go."""
    model = AutoModelForImageTextToText.from_pretrained(checkpoint).eval()
    ids = torch.tensor([[2, 4, 286, 272, 207, 97, 5, 207, 4]])
    embeds = model.get_input_embeddings()(ids)
    with pytest.raises(ValueError, match="You passed `inputs_embeds` to `.generate\\(\\)`"):
        model.generate(inputs_embeds=embeds, max_new_tokens=2)
    generate_from_embeds(model)
    with torch.no_grad():
        from_embeds = model.generate(inputs_embeds=embeds, max_new_tokens=4, do_sample=False)
        from_ids = model.generate(input_ids=ids, max_new_tokens=4, do_sample=False)
    assert torch.equal(from_embeds, from_ids[:, ids.shape[1] :])


def test_lora_on_the_language_model_only_and_the_projector_trains():
    """SigLIP's attention also has q/k/v_proj: the adapters stay in the language model."""
    model, _ = build_tiny_gemma3(TinyGemma3Spec())
    model = prepare_for_training(model, Gemma3Family(), lora=LoraSpec(r=2, alpha=4))
    trainable = {n for n, p in unwrap(model).named_parameters() if p.requires_grad}
    lora = {n for n in trainable if "lora_" in n}
    assert lora and all(n.startswith("model.language_model.layers.") for n in lora)
    assert trainable - lora == {
        "model.multi_modal_projector.mm_input_projection_weight",
        "model.multi_modal_projector.mm_soft_emb_norm.weight",
    }


@pytest.mark.parametrize("block", [None, 0])
def test_relevance_column_equals_eager_output_attentions(pair, two_sizes, block, question_batch):
    """The analyses that look inside the ViT work: the recorded column is SigLIP's eager attention, on the grid."""
    module, reference = pair
    batch = question_batch(module, two_sizes)
    captured = relevance.capture(reference, module.family, batch, block)
    with torch.no_grad():
        visual = module.family.encode(reference, batch)
    tower = reference.model.vision_tower
    tower.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            attentions = tower(batch["pixel_values"], output_attentions=True).attentions[2 if block is None else block]
    finally:
        tower.set_attn_implementation("sdpa")
    order = torch.arange(256).view(4, 4, 4, 4).permute(0, 2, 1, 3).flatten()  # feature -> raster patch
    for image in range(2):
        for target in (0, 17, 255):
            expected = attentions[image, :, :, order[target]].reshape(-1, 16, 16)
            torch.testing.assert_close(captured.column(image, target), expected, atol=1e-6, rtol=0)
            assert captured.cell(image, target) == divmod(int(order[target]), 16)
    torch.testing.assert_close(captured.visual.features, visual.features, atol=1e-5, rtol=0)
