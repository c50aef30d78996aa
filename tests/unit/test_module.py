"""Module pieces that a run relies on: LR schedule, merge checks, trainable-state loading, family settings."""

import math
import re

import pytest
import torch

from sinkflow.models.build import LoraSpec, prepare_for_training
from sinkflow.models.families.llava import LlavaFamily
from sinkflow.models.tiny import TinyLlavaSpec, build_tiny_llava
from sinkflow.module import SinkflowModule, cosine_with_warmup
from sinkflow.pathway import Routed, VisualFeatures
from sinkflow.sinks.strategies.none import NoneStrategy


@pytest.fixture(scope="module")
def module():
    model, processor = build_tiny_llava(TinyLlavaSpec())
    family = LlavaFamily()
    model = prepare_for_training(model, family, lora=LoraSpec(r=2, alpha=4))
    return SinkflowModule(model, processor, family, NoneStrategy())


def test_cosine_with_warmup_shape():
    schedule = [cosine_with_warmup(s, total=110, warmup=10, min_ratio=0.1) for s in range(111)]
    assert schedule[0] == 0.0 and schedule[5] == 0.5 and schedule[10] == 1.0
    assert schedule[60] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert schedule[110] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(schedule[10:], schedule[11:]))  # monotone after warmup
    assert cosine_with_warmup(500, total=110, warmup=10) == pytest.approx(0.0)  # past the end: floor


def test_merge_checks_the_placeholders_against_the_images(module):
    image_id, width = module.hf.config.image_token_id, module.hf.config.text_config.hidden_size
    batch = {
        "input_ids": torch.tensor([[1, image_id, image_id, 5]]),
        "attention_mask": torch.ones(1, 4, dtype=torch.long),
    }
    three_slots = VisualFeatures(torch.zeros(1, 3, 8))
    routed = Routed([torch.zeros(3, width)], [torch.arange(3)])
    with pytest.raises(ValueError, match="2 image placeholder tokens but its 1 images need 3"):
        module.family.merge(module.hf, batch, three_slots, routed)
    with pytest.raises(ValueError, match="placeholder tokens but no images"):
        module.family.merge(module.hf, batch, None, None)
    two_slots = VisualFeatures(torch.zeros(1, 2, 8))
    merged = module.family.merge(module.hf, batch, two_slots, Routed([torch.ones(2, width)], [torch.arange(2)]))[0]
    assert (merged["inputs_embeds"][0, 1:3] == 1).all()


def test_load_trainable_requires_an_exact_fit(module):
    state = {k: torch.zeros_like(v) for k, v in module.trainable_state_dict().items()}
    module.load_trainable(state, "ok.ckpt")
    assert all((p == 0).all() for n, p in module.named_parameters() if p.requires_grad)
    missing = dict(list(state.items())[1:])
    with pytest.raises(ValueError, match=r"bad.ckpt: checkpoint does not fit the model: missing \['"):
        module.load_trainable(missing, "bad.ckpt")
    with pytest.raises(ValueError, match=r"unexpected \['strategy.router.weight'\]"):
        module.load_trainable({**state, "strategy.router.weight": torch.zeros(1)}, "bad.ckpt")


def test_llava_family_rejects_unknown_select_strategy():
    message = "`model.family.vision_feature_select_strategy` must be one of ('default', 'full'), got 'cls'"
    with pytest.raises(ValueError, match=re.escape(message)):
        LlavaFamily(vision_feature_select_strategy="cls")


def test_the_overrides_of_the_strategy_group_and_its_keys_are_found():
    from sinkflow.run import strategy_overrides

    overrides = ["sink_strategy=sink_front", "+sink_strategy.detector.k=2", "sink_strategy/detector=topk"]
    others = ["model=tiny_llava", "sink_strategy_lr=1", "ckpt_path=/runs/sink_strategy=x/last.ckpt"]
    assert strategy_overrides([*others, *overrides]) == overrides


def test_evaluate_rejects_a_checkpoint_sinkflow_did_not_write(tmp_path):
    from omegaconf import OmegaConf

    from sinkflow.run import evaluate

    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}}, path)
    cfg = OmegaConf.create({"ckpt_path": str(path), "model": {}, "sink_strategy": {}})
    with pytest.raises(ValueError, match=r"other.ckpt: not a sinkflow checkpoint"):
        evaluate(cfg)


def test_resuming_from_a_checkpoint_of_another_strategy_says_so(module):
    """Lightning loads checkpoints with strict=False here (they hold trainable weights only): the fit is checked."""
    from sinkflow.sinks.detectors.norm_threshold import NormThreshold
    from sinkflow.sinks.strategies.dual_mlp import DualMLP

    model, processor = build_tiny_llava(TinyLlavaSpec())
    family = LlavaFamily()
    dual = SinkflowModule(
        prepare_for_training(model, family, lora=LoraSpec(r=2, alpha=4)), processor, family, DualMLP(), NormThreshold()
    )
    checkpoint = {
        "state_dict": module.trainable_state_dict(),
        "sinkflow": {
            "config": {"sink_strategy": {"strategy": {"_target_": "sinkflow.sinks.strategies.none.NoneStrategy"}}}
        },
    }
    with pytest.raises(
        ValueError,
        match=r"checkpoint: checkpoint does not fit the model: missing \['strategy\..*"
        r"\(it was trained with strategy none, this run uses dual_mlp: "
        r"resume with the arguments of the run that wrote it\)",
    ):
        dual.on_load_checkpoint(checkpoint)
    module.on_load_checkpoint(checkpoint)  # its own checkpoint fits
