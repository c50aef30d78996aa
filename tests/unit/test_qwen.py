"""Qwen2-VL and Qwen2.5-VL through sinkflow's pathway: parity with plain transformers, routing with M-RoPE."""

import pytest
import torch

from sinkflow.models.families.qwen2_5_vl import Qwen25VLFamily
from sinkflow.models.families.qwen2_vl import Qwen2VLFamily
from sinkflow.models.tiny_qwen import ensure_tiny_qwen

FAMILIES = {"qwen2_vl": Qwen2VLFamily, "qwen2_5_vl": Qwen25VLFamily}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def pair(request, tmp_path_factory, loaded_pair):
    """A tiny Qwen checkpoint loaded through sinkflow (with its family) and through plain transformers; the
    two_sizes images are 16 and 6 merged tokens."""
    path = ensure_tiny_qwen(tmp_path_factory.mktemp("qwen"), variant=request.param, seed=2)
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


def hand_routed_logits(reference, batch, place: str, position_mode: str, sink_order, keep_positions, k: int = 3):
    """Plain transformers: merged tokens holding the k highest-norm patches moved to `place`, positions by hand."""
    with torch.no_grad():
        out = reference.model.get_image_features(batch["pixel_values"], batch["image_grid_thw"])
        states = out.last_hidden_state
        if hasattr(reference.model.visual, "window_size"):  # Qwen2.5-VL: blocks ran on windows of merged tokens
            from transformers.vision_utils import get_vision_window_index

            visual = reference.model.visual
            window_index, _ = get_vision_window_index(
                batch["image_grid_thw"], visual.spatial_merge_size, visual.window_size, visual.patch_size
            )
            states = states.view(-1, 4, states.shape[-1])[torch.argsort(window_index)].reshape(states.shape)
        patch_norms = states.norm(dim=-1).split(batch["image_grid_thw"].prod(-1).tolist())
        orders = [
            sink_order(sorted({int(i) // 4 for i in torch.topk(norms, k).indices}), len(norms) // 4, place)
            for norms in patch_norms
        ]
        tokens = torch.cat([merged[order] for merged, order in zip(out.pooler_output, orders)])
        ids, mask = batch["input_ids"], batch["attention_mask"]
        placeholders = ids == reference.config.image_token_id
        embeds = reference.get_input_embeddings()(ids).masked_scatter(placeholders.unsqueeze(-1), tokens)
        rope, _ = reference.model.get_rope_index(
            ids, placeholders.int(), image_grid_thw=batch["image_grid_thw"], attention_mask=mask
        )
        if position_mode == "original":
            keep_positions(rope, placeholders, orders)
        text = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
        assert any(not torch.equal(order, torch.arange(len(order))) for order in orders), "a real permutation"
        return reference(inputs_embeds=embeds, attention_mask=mask, position_ids=torch.cat([text[None], rope])).logits


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


def test_patch_sinks_map_to_merged_tokens_any_patch_or_own_norm():
    from sinkflow.pathway import VisualFeatures
    from sinkflow.sinks.detectors.norm_threshold import NormThreshold

    features = torch.zeros(2, 12, 4)
    features[:, :, 0] = 1.0
    features[0, 1, 0] = 200.0  # one sink patch in token 0 of image 0
    features[0, 4:8, 0] = 60.0  # token 1 of image 0: no patch above tau, together above it (4 x 60^2 = 120^2)
    features[1, 9, 0] = 300.0  # image 1 has 8 patches: patch 9 is padding and must never count
    visual = VisualFeatures(features, lengths=[12, 8], group=4)
    detector = NormThreshold(tau=100.0)
    assert Qwen2VLFamily().token_sinks(detector, visual).tolist() == [[True, False, False], [False, False, False]]
    assert Qwen2VLFamily(sink_tokens="own_norm").token_sinks(detector, visual).tolist() == [
        [True, True, False],
        [False, False, False],
    ]
    assert visual.slots == [3, 2]
    with pytest.raises(ValueError, match="`model.family.sink_tokens` must be one of"):
        Qwen2VLFamily(sink_tokens="mean")


@pytest.mark.parametrize("layout", ["chat_template.jinja", "chat_template.json"])
def test_the_processor_chat_template_is_found_when_the_tokenizer_has_none(tmp_path, layout):
    import json

    from sinkflow.models.processor import ImageTextProcessor
    from sinkflow.models.tiny_qwen import QWEN_CHAT_TEMPLATE, TinyQwenSpec, build_tiny_qwen

    _, processor = build_tiny_qwen(TinyQwenSpec())
    processor.tokenizer.chat_template = None
    processor.save_pretrained(tmp_path)
    text = QWEN_CHAT_TEMPLATE if layout.endswith("jinja") else json.dumps({"chat_template": QWEN_CHAT_TEMPLATE})
    (tmp_path / layout).write_text(text)
    loaded = ImageTextProcessor.from_pretrained(tmp_path)
    assert loaded.chat_template == QWEN_CHAT_TEMPLATE
    rendered = loaded.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_lora_on_the_language_model_only_and_the_merger_trains_inside_a_frozen_tower():
    from sinkflow.models.build import LoraSpec, prepare_for_training, unwrap
    from sinkflow.models.tiny_qwen import TinyQwenSpec, build_tiny_qwen

    model, _ = build_tiny_qwen(TinyQwenSpec())
    family = Qwen2VLFamily()
    model = prepare_for_training(model, family, lora=LoraSpec(r=2, alpha=4))
    trainable = {n for n, p in unwrap(model).named_parameters() if p.requires_grad}
    lora = {n for n in trainable if "lora_" in n}
    assert lora and all(n.startswith("model.language_model.layers.") for n in lora)
    assert trainable - lora == {n for n, _ in unwrap(model).named_parameters() if n.startswith("model.visual.merger.")}
