"""Qwen3-VL (dense and MoE) through sinkflow's pathway: parity with plain transformers, and DeepStack features that
move and drop with their routed tokens at every injected layer (docs/models.md#qwen3-vl)."""

import pytest
import torch

from sinkflow.analysis import relevance
from sinkflow.models.build import LoraSpec, prepare_for_training, unwrap
from sinkflow.models.families.qwen3_vl import DEEPSTACK, Qwen3VLFamily
from sinkflow.models.families.qwen3_vl_moe import Qwen3VLMoeFamily
from sinkflow.models.tiny_qwen import TinyQwenSpec, build_tiny_qwen, ensure_tiny_qwen
from sinkflow.module import SinkflowModule
from sinkflow.sinks.detectors.topk import TopK
from sinkflow.sinks.strategies.drop_sinks import DropSinks
from sinkflow.sinks.strategies.dual_mlp import DualMLP
from sinkflow.sinks.strategies.sink_front import SinkFront

FAMILIES = {"qwen3_vl": Qwen3VLFamily, "qwen3_vl_moe": Qwen3VLMoeFamily}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def pair(request, tmp_path_factory, loaded_pair):
    """A tiny Qwen3-VL checkpoint loaded through sinkflow (with its family) and through plain transformers; the
    two_sizes images are 16 and 6 merged tokens."""
    path = ensure_tiny_qwen(tmp_path_factory.mktemp("qwen3"), variant=request.param, seed=2)
    return loaded_pair(path, FAMILIES[request.param]())


def test_none_equals_transformers_logits_and_generation(
    pair, two_sizes, assert_parity, question_batch, qwen_reference_inputs
):
    module, reference = pair
    batch = question_batch(module, two_sizes)
    assert batch["image_grid_thw"].tolist() == [[1, 8, 8], [1, 4, 6]]
    assert (batch["attention_mask"] == 0).any(), "the batch must exercise padding"
    assert (batch["input_ids"] == reference.config.image_token_id).sum(dim=1).tolist() == [16, 6]
    assert_parity(module, reference, batch, qwen_reference_inputs(reference, batch))


def test_deepstack_reaches_the_language_model_on_the_prefill_only(
    pair, two_sizes, question_batch, qwen_reference_inputs
):
    """The workaround is load-bearing (without DeepStack the logits differ), and `generate` hands the features over
    on its prefill pass only: every decode step runs without them."""
    module, reference = pair
    batch = question_batch(module, two_sizes)
    with torch.no_grad():
        inputs = module.pathway(batch).inputs
        theirs = reference(**qwen_reference_inputs(reference, batch)).logits
        without = reference(**{k: v for k, v in inputs.items() if k != "mm_encoder_outputs"}).logits
    mask = batch["attention_mask"].bool()
    assert not torch.allclose(without[mask], theirs[mask], atol=1e-3), "DeepStack must change the logits"
    seen = []
    language_model = module.hf.model.language_model
    hook = language_model.register_forward_pre_hook(
        lambda _, args, kwargs: seen.append((kwargs["inputs_embeds"].shape[1], kwargs.get("deepstack_visual_embeds"))),
        with_kwargs=True,
    )
    try:
        module.generate(batch)
    finally:
        hook.remove()
    (prefill, levels), *decode = seen
    assert prefill == batch["input_ids"].shape[1] and len(levels) == 2 and levels[0].shape == (22, 128)
    assert decode and all(length == 1 and stack is None for length, stack in decode)


def test_deepstack_features_serve_their_inputs_or_a_continuation_and_nothing_else(pair, two_sizes, question_batch):
    """A pass that appends columns (an analysis running a generated answer after the prompt) gets the features at
    the prompt's image tokens, so the prompt's logits are unchanged; a shorter pass is refused."""
    module, _ = pair
    inputs = module.pathway(question_batch(module, two_sizes)).inputs
    inputs.pop("labels")
    extra = module.hf.get_input_embeddings()(torch.tensor([[5, 6, 7]] * 2))
    longer = {
        **inputs,
        "inputs_embeds": torch.cat([inputs["inputs_embeds"], extra], dim=1),
        "attention_mask": torch.cat([inputs["attention_mask"], torch.ones(2, 3, dtype=torch.long)], dim=1),
        "position_ids": torch.cat([inputs["position_ids"], inputs["position_ids"][..., -1:] + torch.arange(1, 4)], -1),
    }
    with torch.no_grad():
        prompt, extended = module.hf(**inputs).logits, module.hf(**longer).logits
    mask = inputs["attention_mask"].bool()
    torch.testing.assert_close(extended[:, :-3][mask], prompt[mask], atol=1e-5, rtol=0)
    shorter = {key: value[..., 1:] for key, value in inputs.items() if key in ("attention_mask", "position_ids")}
    shorter.update(inputs_embeds=inputs["inputs_embeds"][:, 1:], mm_encoder_outputs=inputs["mm_encoder_outputs"])
    with pytest.raises(ValueError, match=r"DeepStack features for \(2, 59\) tokens reached a pass over \(2, 58\)"):
        module.hf(**shorter)


def hand_routed(reference, batch, k: int = 3):
    """Plain transformers' pieces for routing by hand: per image its merged tokens, DeepStack features per level,
    and its sink tokens (those holding the k highest-norm patches), with the unrouted embeddings and positions."""
    with torch.no_grad():
        out = reference.model.get_image_features(batch["pixel_values"], batch["image_grid_thw"])
        norms = out.last_hidden_state.norm(dim=-1).split(batch["image_grid_thw"].prod(-1).tolist())
        sinks = [sorted({int(i) // 4 for i in torch.topk(n, k).indices}) for n in norms]
        ids, mask = batch["input_ids"], batch["attention_mask"]
        placeholders = ids == reference.config.image_token_id
        rope, _ = reference.model.get_rope_index(
            ids, placeholders.int(), image_grid_thw=batch["image_grid_thw"], attention_mask=mask
        )
        text = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    return {
        "tokens": list(out.pooler_output),
        "levels": [list(level) for level in out.deepstack_features],
        "sinks": sinks,
        "embeds": reference.get_input_embeddings()(ids),
        "positions": torch.cat([text[None], rope]),
        "placeholders": placeholders,
    }


def language_model_logits(reference, embeds, mask, positions, image_columns, levels):
    """Plain transformers' language model fed everything by hand (embeddings, positions, DeepStack), then the head."""
    with torch.no_grad():
        hidden = reference.model.language_model(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions,
            visual_pos_masks=image_columns,
            deepstack_visual_embeds=levels,
        ).last_hidden_state
        return reference.lm_head(hidden)


@pytest.mark.parametrize("position_mode", ["contiguous", "original"])
@pytest.mark.parametrize("place", ["front", "end"])
def test_sink_front_and_end_equal_transformers_with_permuted_tokens_positions_and_deepstack(
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
        keep_positions(positions[1:], placeholders, orders)  # the text positions (row 0) stay
    moved = [torch.cat([image[order] for image, order in zip(level, orders)]) for level in parts["levels"]]
    theirs = language_model_logits(reference, embeds, batch["attention_mask"], positions, placeholders, moved)
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(ours[mask], theirs[mask], atol=1e-5, rtol=0)
    # DeepStack features left in raster order behind moved tokens would give other logits.
    unmoved = [torch.cat(level) for level in parts["levels"]]
    stale = language_model_logits(reference, embeds, batch["attention_mask"], positions, placeholders, unmoved)
    assert not torch.allclose(stale[mask], theirs[mask], atol=1e-3)


def test_drop_sinks_drops_their_deepstack_features_too(pair, two_sizes, question_batch, rerouted):
    """Each row rebuilt by hand without its image's sink tokens: their DeepStack rows go with them."""
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
        positions = parts["positions"][:, 0]
        positions = torch.cat([positions[:, :start], positions[:, block[: len(kept)]], positions[:, end:]], dim=1)
        columns = torch.zeros(embeds.shape[1], dtype=torch.bool)
        columns[start : start + len(kept)] = True
        levels = [level[0][kept] for level in parts["levels"]]
        theirs = language_model_logits(
            reference, embeds, torch.ones_like(columns)[None].long(), positions[:, None], columns[None], levels
        )
        assert ours.shape == theirs.shape and len(kept) < n_tokens
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_a_replacement_projector_leaves_the_deepstack_mergers_the_models_own(pair, two_sizes, question_batch):
    """DIYSink's randomly initialised projectors replace the merger; the DeepStack features are still the model's,
    moved exactly as sink_front moves them."""
    module, _ = pair
    batch = question_batch(module, two_sizes)
    detector = TopK(k=3)
    with torch.no_grad():
        front = SinkflowModule(module.model, module.processor, module.family, SinkFront(), detector).eval()
        dual = SinkflowModule(module.model, module.processor, module.family, DualMLP(init="random"), detector).eval()
        expected, got = front.pathway(batch).inputs, dual.pathway(batch).inputs
    assert not torch.allclose(got["inputs_embeds"], expected["inputs_embeds"])
    torch.testing.assert_close(
        got["mm_encoder_outputs"][DEEPSTACK], expected["mm_encoder_outputs"][DEEPSTACK], atol=0, rtol=0
    )


def test_features_and_deepstack_extras_are_transformers_own(pair, two_sizes, question_batch):
    module, reference = pair
    batch = question_batch(module, two_sizes)
    with torch.no_grad():
        visual = module.family.encode(module.hf, batch)
        out = reference.model.get_image_features(batch["pixel_values"], batch["image_grid_thw"])
    assert visual.slots == [16, 6] and visual.group == 4
    torch.testing.assert_close(visual.features[visual.valid()], out.last_hidden_state, atol=0, rtol=0)
    for ours, theirs in zip(visual.extras["deepstack"], out.deepstack_features, strict=True):
        for image, expected in zip(ours, theirs, strict=True):
            torch.testing.assert_close(image, expected, atol=0, rtol=0)


@pytest.mark.parametrize("variant", sorted(FAMILIES))
def test_lora_on_the_language_model_only_and_the_deepstack_mergers_stay_frozen_with_the_vit(variant):
    """In the MoE the experts are fused 3-D weights, not linears: the adapters go on the attention projections."""
    model, _ = build_tiny_qwen(TinyQwenSpec(variant=variant))
    model = prepare_for_training(model, FAMILIES[variant](), lora=LoraSpec(r=2, alpha=4))
    trainable = {n for n, p in unwrap(model).named_parameters() if p.requires_grad}
    lora = {n for n in trainable if "lora_" in n}
    assert lora and all(n.startswith("model.language_model.layers.") for n in lora)
    assert any(".mlp." in n for n in lora) == (variant == "qwen3_vl")
    merger = {n for n, _ in unwrap(model).named_parameters() if n.startswith("model.visual.merger.")}
    assert merger and trainable - lora == merger


@pytest.mark.parametrize("block", [1, 2])
def test_relevance_column_equals_brute_force_on_the_image_grid(
    pair, two_sizes, block, question_batch, qwen_vit_attention
):
    """The analyses that look inside the ViT work: the recorded column is eager attention, put on the patch grid."""
    from sinkflow.models.families.qwen2_vl import merge_window_cells

    module, reference = pair
    batch = question_batch(module, two_sizes)
    captured = relevance.capture(reference, module.family, batch, block)
    probs = qwen_vit_attention(reference, batch, block)
    start = 0
    for image, (_, height, width) in enumerate(batch["image_grid_thw"].tolist()):
        cells = merge_window_cells(height, width, 2)  # the processor order of the patch in each grid cell
        for target in (0, 5, height * width - 1):
            expected = probs[:, start + cells, start + target]
            torch.testing.assert_close(captured.column(image, target), expected, atol=1e-6, rtol=0)
        start += height * width
