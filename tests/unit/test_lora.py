"""LoRA on the language model only; only LoRA + projector train; each group gets its own learning rate."""

import re

import pytest

from sinkflow.models.build import LoraSpec, lora_target_regex, prepare_for_training
from sinkflow.models.families.llava import LlavaFamily
from sinkflow.models.tiny import TinyLlavaSpec, build_tiny_llava
from sinkflow.module import OptimSpec, SinkflowModule
from sinkflow.sinks.strategies.none import NoneStrategy

SPEC = TinyLlavaSpec()


@pytest.fixture(scope="module")
def module():
    model, processor = build_tiny_llava(SPEC)
    family = LlavaFamily()
    model = prepare_for_training(model, family, lora=LoraSpec(r=4, alpha=8))
    return SinkflowModule(model, processor, family, NoneStrategy(), optim=OptimSpec(lr=1e-3, projector_lr=2e-5))


def test_target_regex_is_anchored_to_the_language_model():
    pattern = lora_target_regex(LlavaFamily(), ["q_proj", "down_proj"])
    assert re.fullmatch(pattern, "model.language_model.layers.0.self_attn.q_proj")
    assert re.fullmatch(pattern, "model.language_model.layers.1.mlp.down_proj")
    # CLIP's attention has the same leaf names: suffix targets would have wrapped it.
    assert not re.fullmatch(pattern, "model.vision_tower.vision_model.encoder.layers.0.self_attn.q_proj")
    assert not re.fullmatch(pattern, "model.language_model.layers.0.self_attn.k_proj")


def test_no_vision_or_projector_module_is_wrapped(module):
    wrapped = [name for name, mod in module.hf.named_modules() if hasattr(mod, "lora_A")]
    assert len(wrapped) == SPEC.text_layers * 7
    assert all(name.startswith("model.language_model.layers.") for name in wrapped)
    assert not any("vision_tower" in n or "multi_modal_projector" in n or "lm_head" in n for n in wrapped)


def test_only_lora_and_projector_are_trainable(module):
    trainable = [n for n, p in module.named_parameters() if p.requires_grad]
    projector = [n for n in trainable if ".multi_modal_projector." in n]
    lora = [n for n in trainable if ".lora_A." in n or ".lora_B." in n]
    assert sorted(projector + lora) == sorted(trainable)
    assert len(projector) == 4 and len(lora) == 2 * SPEC.text_layers * 7
    assert not any(p.requires_grad for p in module.family.vision_tower(module.hf).parameters())


def test_parameter_groups_use_their_own_learning_rates(module):
    groups = {g["name"]: g for g in module.parameter_groups()}
    assert set(groups) == {"lora", "projector"}
    assert groups["lora"]["lr"] == 1e-3 and groups["projector"]["lr"] == 2e-5
    projector_ids = {id(p) for p in module.family.projector(module.hf).parameters()}
    assert {id(p) for p in groups["projector"]["params"]} == projector_ids
    n_trainable = sum(1 for p in module.parameters() if p.requires_grad)
    assert sum(len(g["params"]) for g in groups.values()) == n_trainable


def test_full_fine_tuning_trains_the_language_model_and_exports_it(tmp_path):
    """`train_language_model`: every LLM weight and the LM head train (no LoRA); the export reloads them."""
    import torch

    from sinkflow.models.export import export_trainable, load_export

    model, processor = build_tiny_llava(SPEC)
    family = LlavaFamily()
    with pytest.raises(ValueError, match="set model.lora=null"):
        prepare_for_training(model, family, lora=LoraSpec(r=4, alpha=8), train_language_model=True)
    model = prepare_for_training(model, family, lora=None, train_language_model=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {
        n
        for n, _ in model.named_parameters()
        if n.startswith(("model.language_model.", "model.multi_modal_projector.", "lm_head."))
    }
    assert trainable == expected and any(n.startswith("lm_head.") for n in trainable)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("model.language_model.layers.0."):
                p.add_(0.01)
    module = SinkflowModule(model, processor, family, NoneStrategy())
    out = export_trainable(module, tmp_path / "export")
    fresh, _ = build_tiny_llava(SPEC)
    reloaded = load_export(fresh, out)
    ids = torch.tensor([[1, 5, 9, 12]])
    torch.testing.assert_close(reloaded.eval()(input_ids=ids).logits, model.eval()(input_ids=ids).logits)
