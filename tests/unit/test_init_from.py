"""`init_from`: a run starts from an earlier run's whole export (adapter, projector, strategy parts), its checkpoint
evaluates with that start re-applied, and its own export stands alone; plain transformers refuses what it cannot
apply."""

import warnings

import pytest
import torch
from omegaconf import OmegaConf

from sinkflow.data.collate import Collator
from sinkflow.data.templates import VicunaV1
from sinkflow.models.checkpoint import read_trained
from sinkflow.models.export import export_trainable, load_export
from sinkflow.module import SinkflowModule
from test_configs import compose_cfg  # pytest puts tests/unit on sys.path (no __init__.py)


def build(tmp_path, overrides, **kwargs):
    """A module of the random tiny LLaVA (the one `tiny_checkpoint` and `batch` are made for)."""
    cfg = compose_cfg("train", ["model=tiny_llava", *overrides], tmp_path)
    return SinkflowModule.from_config(
        cfg.model, cfg.sink_strategy, train=True, init_from=cfg.get("init_from"), **kwargs
    )


def perturb(module, seed: int) -> None:
    """Stand-in for training: every trainable weight moves."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=generator))


def logits(module, batch):
    with torch.no_grad():
        return module.eval()(batch).logits


@pytest.fixture()
def batch(shapes_root, tiny_checkpoint):
    from sinkflow.models.build import load_pretrained

    _, processor = load_pretrained(tiny_checkpoint)
    samples = [
        {
            "id": str(i),
            "image": str(shapes_root / "eval_images" / f"eval_{i:05d}.png"),
            "conversations": [
                {"from": "human", "value": "<image>\nWhat is the background color?"},
                {"from": "gpt", "value": "red"},
            ],
        }
        for i in range(2)
    ]
    return Collator(processor, VicunaV1())(samples)


@pytest.fixture()
def stage2(tmp_path, tiny_checkpoint):
    """A DIYSink stage-2 run (Dual-MLP + LoRA), 'trained' and exported as train.py lays it out."""
    module = build(tmp_path, ["sink_strategy=dual_mlp"])
    perturb(module, seed=1)
    export_trainable(module, tmp_path / "stage2" / "checkpoints" / "export")
    return module


def test_rew_trains_its_router_on_the_stage2_model_not_the_base_one(tmp_path, stage2, batch, tiny_encoder):
    rew = build(
        tmp_path,
        [
            "experiment=diysink_rew",
            f"init_from={tmp_path / 'stage2'}",
            f"sink_strategy.strategy.encoder={tiny_encoder}",
        ],
    )
    # The router starts at weights 1: ReW's model is exactly stage 2's, LoRA included.
    torch.testing.assert_close(logits(rew, batch), logits(stage2, batch), atol=0, rtol=0)
    trainable = {n for n, p in rew.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("strategy.router.") for n in trainable)
    assert any("lora_" in n for n, _ in rew.named_parameters()), "stage 2's adapter is on the LLM, frozen"
    assert rew.run_config["init_from"] == str((tmp_path / "stage2" / "checkpoints" / "export").resolve())
    base = build(
        tmp_path, ["experiment=diysink_rew", "init_from=null", f"sink_strategy.strategy.encoder={tiny_encoder}"]
    )
    assert not torch.allclose(logits(base, batch), logits(stage2, batch), atol=1e-3)


def test_a_run_started_from_an_export_evaluates_from_its_checkpoint_and_from_its_own_export(
    tmp_path, stage2, batch, tiny_encoder
):
    rew = build(
        tmp_path,
        [
            "experiment=diysink_rew",
            f"init_from={tmp_path / 'stage2'}",
            f"sink_strategy.strategy.encoder={tiny_encoder}",
        ],
    )
    perturb(rew, seed=2)
    expected = logits(rew, batch)
    torch.save(
        {"sinkflow": {"source": rew.source, "config": rew.run_config}, "state_dict": rew.trainable_state_dict()},
        tmp_path / "rew.ckpt",
    )
    export = export_trainable(rew, tmp_path / "rew_export")
    assert (export / "adapter" / "adapter_config.json").is_file(), "the frozen adapter travels with the export"
    for path in (tmp_path / "rew.ckpt", export):
        trained = read_trained(path)
        saved = OmegaConf.create(trained.config)
        module = SinkflowModule.from_config(
            saved.model, saved.sink_strategy, train=trained.state is not None, init_from=trained.init_from
        )
        if trained.state is not None:
            module.load_trainable(trained.state, trained.path)
        torch.testing.assert_close(logits(module, batch), expected, atol=0, rtol=0)


def test_init_from_names_what_is_wrong(tmp_path, stage2):
    with pytest.raises(
        FileNotFoundError,
        match=r"init_from=.*nowhere: expected an export directory \(with "
        r"export.json\) or a run directory",
    ):
        build(tmp_path, [f"init_from={tmp_path / 'nowhere'}"])
    with pytest.raises(
        ValueError,
        match=r"adapter .* does not match model.lora: r is 16 there, 4 here, lora_alpha "
        r"is 32 there, 8 here",
    ):
        build(tmp_path, [f"init_from={tmp_path / 'stage2'}", "model.lora.r=4", "model.lora.alpha=8"])
    with pytest.raises(
        ValueError,
        match=r"strategy.safetensors: weights that strategy SinkFront has no place for "
        r".*trained with DualMLP\) \(a hint\)",
    ):
        build(tmp_path, [f"init_from={tmp_path / 'stage2'}", "sink_strategy=sink_front"], hint=" (a hint)")


def test_plain_transformers_refuses_an_export_it_cannot_apply(tmp_path, stage2, tiny_checkpoint):
    from transformers import LlavaForConditionalGeneration

    plain = LlavaForConditionalGeneration.from_pretrained(tiny_checkpoint)
    export = tmp_path / "stage2" / "checkpoints" / "export"
    with pytest.raises(
        ValueError,
        match=r"trained with strategy DualMLP, whose weights \(strategy.safetensors\) "
        r"route tokens by sink; plain transformers cannot apply them.*"
        r"`python evaluate.py ckpt_path=",
    ):
        load_export(plain, export)
    front = build(tmp_path, ["sink_strategy=sink_front"])
    perturb(front, seed=3)
    with pytest.warns(
        UserWarning,
        match=r"trained with sink routing SinkFront; plain transformers feeds the visual "
        r"tokens in their original order",
    ):
        load_export(plain, export_trainable(front, tmp_path / "front"))
    none = build(tmp_path, ["sink_strategy=none"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_export(
            LlavaForConditionalGeneration.from_pretrained(tiny_checkpoint), export_trainable(none, tmp_path / "none")
        )
    assert not [w for w in caught if "sink routing" in str(w.message)]


def test_fully_fine_tuned_weights_inherited_from_init_from_travel_with_the_next_export(tmp_path):
    from safetensors.torch import load_file

    full = build(tmp_path, ["sink_strategy=none", "model.lora=null", "model.train_language_model=true"])
    perturb(full, seed=4)
    first = export_trainable(full, tmp_path / "full" / "checkpoints" / "export")
    after = build(tmp_path, ["sink_strategy=none", "model.lora=null", f"init_from={tmp_path / 'full'}"])
    assert not any(p.requires_grad for n, p in after.named_parameters() if "language_model" in n)
    second = export_trainable(after, tmp_path / "after")
    inherited, again = load_file(first / "language_model.safetensors"), load_file(second / "language_model.safetensors")
    assert set(again) == set(inherited) and all(torch.equal(again[k], inherited[k]) for k in inherited)
