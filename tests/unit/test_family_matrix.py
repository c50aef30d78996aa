"""Every registered strategy on every registered family: one training step (loss, gradients, optimizer step) and
batched generation; DIYSink's Dual-MLP against sink_front and its trainable parameters, per family.

The matrix is read from the registries and from `conf/sink_strategy/`, so a new strategy (one module + one YAML) or
family (one module with its tiny builder) joins it with no list to edit.
"""

import importlib
import textwrap
from pathlib import Path

import pytest
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig

from sinkflow.config import CONF_DIR, compose_config
from sinkflow.data.collate import Collator
from sinkflow.models.build import LoraSpec, prepare_for_training
from sinkflow.models.families.base import FAMILIES
from sinkflow.module import SinkflowModule
from sinkflow.sinks.detectors.norm_threshold import NormThreshold
from sinkflow.sinks.simulated import SimulatedSinks
from sinkflow.sinks.strategies.base import STRATEGIES
from sinkflow.sinks.strategies.dual_mlp import DualMLP
from sinkflow.sinks.strategies.sink_front import SinkFront


def strategy_configs(*search: Path) -> list[str]:
    """The names of the `sink_strategy` configs in conf/ and in the extra config folders `search`."""
    folders = (CONF_DIR, *search)
    return sorted({path.stem for folder in folders for path in (folder / "sink_strategy").glob("*.yaml")})


def compose_strategy(name: str, *overrides: str, search: tuple[Path, ...] = ()) -> DictConfig:
    """`sink_strategy=<name>` composed as train.py composes it (with the extra config folders `search`)."""
    return compose_config([f"sink_strategy={name}", *overrides], search=search).sink_strategy


@pytest.fixture(scope="module")
def images(resized_images):
    """Three images, two sizes (Qwen keeps the size; CLIP resizes)."""
    return resized_images([(64, 64), (48, 32), (64, 64)])


def samples(images, answer: bool):
    out = []
    for i, image in enumerate(images):
        turns = [{"from": "human", "value": "<image>\nWhat is the background color?"}]
        if answer:
            turns.append({"from": "gpt", "value": "white"})
        out.append({"id": f"m{i}", "image": image, "conversations": turns})
    return out


def test_strategy_configs_and_registry_agree():
    """Both ways: a strategy without its YAML cannot be chosen, a YAML without its class cannot build."""
    assert len(STRATEGIES) >= 9 and strategy_configs() == STRATEGIES.names()
    for name in STRATEGIES:
        assert get_class(compose_strategy(name).strategy._target_) is STRATEGIES[name]


def test_every_family_has_a_tiny_model_a_template_and_a_config():
    assert len(FAMILIES) >= 3
    models = [path.stem for path in (CONF_DIR / "model").glob("*.yaml") if not path.stem.startswith("_")]
    configured = {get_class(compose_config([f"model={m}"]).model.family._target_) for m in models}
    for name, family_cls in FAMILIES.items():
        assert family_cls in configured, f"family {name} has no conf/model/*.yaml"
        model, processor = family_cls.build_tiny(seed=0)
        assert family_cls().projector(model) is not None and family_cls.default_template() is not None


# What a CPU test adds to a strategy's config: the tiny sentence encoder (ReW), and trained projectors for the
# strategies that expect a Dual-MLP run's (the tiny model has none).
def config_overrides(strategy_name: str, tiny_encoder: str) -> list[str]:
    return {
        "reweight": [f"sink_strategy.strategy.encoder={tiny_encoder}"],
        "cot_route": ["sink_strategy.strategy.train_projectors=true"],
    }.get(strategy_name, [])


@pytest.mark.parametrize("strategy_name", strategy_configs())
@pytest.mark.parametrize("family_name", FAMILIES.names())
def test_strategy_trains_a_step_and_generates(family_name, strategy_name, images, tiny_encoder, planted_family_module):
    strategy_cfg = compose_strategy(strategy_name, *config_overrides(strategy_name, tiny_encoder))
    check_trains_and_generates(family_name, strategy_cfg, images, planted_family_module)


def test_a_new_strategy_joins_the_matrix_with_no_list_edited(tmp_path, monkeypatch, images, planted_family_module):
    """One class + one YAML, both outside the package: the registry and the matrix pick them up."""
    (tmp_path / "toy_reverse.py").write_text(
        textwrap.dedent("""
        import torch

        from sinkflow.sinks.strategies.base import SinkStrategy


        class ReverseTokens(SinkStrategy, name="toy_reverse"):
            needs_sinks = False

            def select(self, visual, sink_mask):
                return [torch.arange(n - 1, -1, -1, device=visual.features.device) for n in visual.slots]
    """)
    )
    (tmp_path / "conf" / "sink_strategy").mkdir(parents=True)
    yaml = "strategy:\n  _target_: toy_reverse.ReverseTokens\n"
    (tmp_path / "conf" / "sink_strategy" / "toy_reverse.yaml").write_text(yaml)
    monkeypatch.setattr(STRATEGIES, "_entries", dict(STRATEGIES._entries))  # forget the toy after the test
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("toy_reverse")
    assert "toy_reverse" in STRATEGIES and "toy_reverse" in strategy_configs(tmp_path / "conf")
    strategy_cfg = compose_strategy("toy_reverse", search=(tmp_path / "conf",))
    assert type(instantiate(strategy_cfg.strategy)) is STRATEGIES["toy_reverse"]
    check_trains_and_generates("llava", strategy_cfg, images, planted_family_module)


def check_trains_and_generates(
    family_name: str, strategy_cfg: DictConfig, images: list[str], planted_family_module
) -> None:
    def with_lora(model, family):
        return prepare_for_training(model, family, lora=LoraSpec(r=2, alpha=4, dropout=0.0))

    module = planted_family_module(family_name, 4, instantiate(strategy_cfg.strategy), prepare=with_lora)
    processor, family, template = module.processor, module.family, module.question_collator.template
    module.train()
    optimizer = torch.optim.AdamW(module.parameter_groups(), lr=1e-2)
    loss = module(Collator(processor, template)(samples(images, answer=True))).loss
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
    collate = Collator(processor, template, generate=True)
    batched = module.generate(collate(samples(images, answer=False)))
    alone = [module.generate(collate([item]))[0] for item in samples(images, answer=False)]
    assert batched == alone and all(batched)


@pytest.mark.parametrize("family_name", FAMILIES.names())
def test_copy_initialised_dual_mlp_equals_sink_front(family_name, images, tiny_family):
    model, processor, family, template = tiny_family(family_name, 4)
    detector, simulated = NormThreshold(tau=100.0), SimulatedSinks(k=2, norm=150.0)
    front = SinkflowModule(model, processor, family, SinkFront(), detector, simulated_sinks=simulated).eval()
    batch = Collator(processor, template)(samples(images, answer=True))
    with torch.no_grad():
        expected = front.pathway(batch).inputs
        dual = SinkflowModule(model, processor, family, DualMLP(init="copy"), detector, simulated_sinks=simulated)
        got = dual.eval().pathway(batch).inputs
    assert set(got) == set(expected)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=0, rtol=0)


@pytest.mark.parametrize("family_name", FAMILIES.names())
def test_only_the_two_projectors_and_lora_train(family_name, images, tiny_family):
    model, processor, family, template = tiny_family(family_name, 4)
    model = prepare_for_training(model, family, lora=LoraSpec(r=2, alpha=4, dropout=0.0))
    module = SinkflowModule(
        model,
        processor,
        family,
        DualMLP(init="random"),
        NormThreshold(tau=100.0),
        simulated_sinks=SimulatedSinks(k=2, norm=150.0),
    ).train()
    module(Collator(processor, template)(samples(images, answer=True))).loss.backward()
    with_grad = {n for n, p in module.named_parameters() if p.grad is not None}
    assert with_grad == {n for n, p in module.named_parameters() if p.requires_grad}
    assert {n.split(".")[1] for n in with_grad if n.startswith("strategy.")} == {"sink_projector", "other_projector"}
    assert all("lora_" in n for n in with_grad if not n.startswith("strategy."))
    assert not any(p.requires_grad for p in family.projector(module.hf).parameters())
    groups = {g["name"]: len(g["params"]) for g in module.parameter_groups()}
    assert set(groups) == {"lora", "strategy"}
    with pytest.raises(ValueError, match="`sink_strategy.strategy.init` must be one of"):
        DualMLP(init="zeros")
