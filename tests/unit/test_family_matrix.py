"""Every strategy on every family: one training step (loss, gradients, optimizer step) and batched generation;
DIYSink's Dual-MLP against sink_front and its trainable parameters, per family."""

import pytest
import torch
from PIL import Image

from sinkflow.data.collate import Collator
from sinkflow.data.templates import ProcessorChatTemplate, VicunaV1
from sinkflow.models.build import LoraSpec, prepare_for_training
from sinkflow.models.families.llava import LlavaFamily
from sinkflow.models.families.qwen2_5_vl import Qwen25VLFamily
from sinkflow.models.families.qwen2_vl import Qwen2VLFamily
from sinkflow.models.tiny import TinyLlavaSpec, build_tiny_llava
from sinkflow.models.tiny_qwen import TinyQwenSpec, build_tiny_qwen
from sinkflow.module import SinkflowModule
from sinkflow.sinks.detect import SinkDetector
from sinkflow.sinks.simulated import SimulatedSinks
from sinkflow.sinks.strategies import STRATEGIES
from sinkflow.sinks.strategies.dual_mlp import DualMLP
from sinkflow.sinks.strategies.sink_front import SinkFront

FAMILIES = {
    "llava": (lambda: build_tiny_llava(TinyLlavaSpec(seed=4)), LlavaFamily, VicunaV1),
    "qwen2_vl": (lambda: build_tiny_qwen(TinyQwenSpec(seed=4)), Qwen2VLFamily, ProcessorChatTemplate),
    "qwen2_5_vl": (lambda: build_tiny_qwen(TinyQwenSpec(variant="qwen2_5_vl", seed=4)), Qwen25VLFamily,
                   ProcessorChatTemplate),
}


@pytest.fixture(scope="module")
def images(shapes_root, tmp_path_factory):
    """Three images, two sizes (Qwen keeps the size; CLIP resizes)."""
    folder = tmp_path_factory.mktemp("matrix")
    paths = []
    for i, size in enumerate([(64, 64), (48, 32), (64, 64)]):
        paths.append(str(folder / f"{i}.png"))
        Image.open(shapes_root / "eval_images" / f"eval_{i:05d}.png").convert("RGB").resize(size).save(paths[-1])
    return paths


def samples(images, answer: bool):
    out = []
    for i, image in enumerate(images):
        turns = [{"from": "human", "value": "<image>\nWhat is the background color?"}]
        if answer:
            turns.append({"from": "gpt", "value": "white"})
        out.append({"id": f"m{i}", "image": image, "conversations": turns})
    return out


@pytest.mark.parametrize("strategy_name", sorted(STRATEGIES))
@pytest.mark.parametrize("family_name", sorted(FAMILIES))
def test_strategy_trains_a_step_and_generates(family_name, strategy_name, images, tiny_encoder):
    build, family_cls, template_cls = FAMILIES[family_name]
    model, processor = build()
    family = family_cls()
    model = prepare_for_training(model, family, lora=LoraSpec(r=2, alpha=4, dropout=0.0))
    options = {"reweight": {"encoder": tiny_encoder}, "cot_route": {"train_projectors": True}}
    strategy = STRATEGIES[strategy_name](**options.get(strategy_name, {}))
    module = SinkflowModule(model, processor, family, strategy, SinkDetector(tau=100.0),
                            simulated_sinks=SimulatedSinks(k=2, norm=150.0),
                            prompter=Collator(processor, template_cls(), generate=True))  # cot_route asks
    module.train()
    optimizer = torch.optim.AdamW(module.parameter_groups(), lr=1e-2)
    loss = module(Collator(processor, template_cls())(samples(images, answer=True))).loss
    loss.backward()
    assert torch.isfinite(loss)
    # The projector trains, or (dual_mlp) the strategy's own projectors do.
    projector = list(family.projector(module.hf).parameters()) + list(module.strategy.parameters())
    projector = [p for p in projector if p.requires_grad]
    before = [p.detach().clone() for p in projector]
    optimizer.step()
    assert projector and any(not torch.equal(a, p) for a, p in zip(before, projector)), "the projector must train"

    module.eval()
    module.generation.max_new_tokens = 4
    collate = Collator(processor, template_cls(), generate=True)
    batched = module.generate(collate(samples(images, answer=False)))
    alone = [module.generate(collate([item]))[0] for item in samples(images, answer=False)]
    assert batched == alone and all(batched)


@pytest.mark.parametrize("family_name", sorted(FAMILIES))
def test_copy_initialised_dual_mlp_equals_sink_front(family_name, images):
    build, family_cls, template_cls = FAMILIES[family_name]
    model, processor = build()
    family = family_cls()
    detector, simulated = SinkDetector(tau=100.0), SimulatedSinks(k=2, norm=150.0)
    front = SinkflowModule(model, processor, family, SinkFront(), detector, simulated_sinks=simulated).eval()
    batch = Collator(processor, template_cls())(samples(images, answer=True))
    with torch.no_grad():
        expected, _ = front.pathway(batch)
        dual = SinkflowModule(model, processor, family, DualMLP(init="copy"), detector, simulated_sinks=simulated)
        got, _ = dual.eval().pathway(batch)
    assert set(got) == set(expected)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=0, rtol=0)


@pytest.mark.parametrize("family_name", sorted(FAMILIES))
def test_only_the_two_projectors_and_lora_train(family_name, images):
    build, family_cls, template_cls = FAMILIES[family_name]
    model, processor = build()
    family = family_cls()
    model = prepare_for_training(model, family, lora=LoraSpec(r=2, alpha=4, dropout=0.0))
    module = SinkflowModule(model, processor, family, DualMLP(init="random"), SinkDetector(tau=100.0),
                            simulated_sinks=SimulatedSinks(k=2, norm=150.0)).train()
    module(Collator(processor, template_cls())(samples(images, answer=True))).loss.backward()
    with_grad = {n for n, p in module.named_parameters() if p.grad is not None}
    assert with_grad == {n for n, p in module.named_parameters() if p.requires_grad}
    assert {n.split(".")[1] for n in with_grad if n.startswith("strategy.")} == {"sink_projector", "other_projector"}
    assert all("lora_" in n for n in with_grad if not n.startswith("strategy."))
    assert not any(p.requires_grad for p in family.projector(module.hf).parameters())
    groups = {g["name"]: len(g["params"]) for g in module.parameter_groups()}
    assert set(groups) == {"lora", "strategy"}
    with pytest.raises(ValueError, match="init must be one of"):
        DualMLP(init="zeros")
