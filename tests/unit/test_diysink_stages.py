"""DIYSink two-stage training: stage 1 trains one projector on its own token type, stage 2 both from stage 1's
files; each stage trains exactly its parameters and its checkpoint reloads to the same logits."""

from functools import partial

import pytest
import torch
from safetensors.torch import save_file

from sinkflow.data.collate import Collator
from sinkflow.data.templates import VicunaV1
from sinkflow.models.build import LoraSpec, prepare_for_training
from sinkflow.models.families.llava import LlavaFamily
from sinkflow.models.tiny import TinyLlavaSpec, build_tiny_llava
from sinkflow.sinks.strategies.dual_mlp import DualMLP


@pytest.fixture()
def wrap(simulated_llava):
    def build(strategy, lora=None):
        prepare = partial(prepare_for_training, family=LlavaFamily(), lora=lora, train_projector=False)
        return simulated_llava(strategy, seed=7, prepare=prepare).train()

    return build


@pytest.fixture(scope="module")
def batch(shapes_root):
    _, processor = build_tiny_llava(TinyLlavaSpec(seed=7))
    samples = [
        {
            "id": str(i),
            "image": str(shapes_root / "eval_images" / f"eval_{i:05d}.png"),
            "conversations": [
                {"from": "human", "value": "<image>\nWhat is the background color?"},
                {"from": "gpt", "value": "white"},
            ],
        }
        for i in range(2)
    ]
    return Collator(processor, VicunaV1())(samples)


def trained_names(module, batch):
    module.zero_grad()
    module(batch).loss.backward()
    return {n for n, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    "stage,projector,n_visual", [("sinks", "sink_projector", 2), ("others", "other_projector", 14)]
)
def test_stage_one_trains_one_projector_on_its_own_tokens(batch, stage, projector, n_visual, wrap):
    module = wrap(DualMLP(init="random", stage=stage))
    with torch.no_grad():
        merged = module.pathway(batch).inputs
    real = batch["attention_mask"].sum(dim=1)
    assert (merged["attention_mask"].sum(dim=1) == real - 16 + n_visual).all()
    assert {n.split(".")[1] for n in trained_names(module, batch)} == {projector}


def test_stage_two_starts_from_both_stage_one_files_and_trains_them_with_lora(batch, tmp_path, wrap):
    files = {}
    for stage in ("sinks", "others"):
        stage_one = wrap(DualMLP(init="random", stage=stage))
        with torch.no_grad():
            for p in stage_one.strategy.parameters():
                p.add_(torch.randn_like(p))
        files[stage] = tmp_path / f"{stage}.safetensors"
        save_file({k: v.contiguous() for k, v in stage_one.strategy.state_dict().items()}, files[stage])
        files[stage + "_module"] = stage_one
    module = wrap(
        DualMLP(stage="both", sink_projector_from=str(files["sinks"]), other_projector_from=str(files["others"])),
        lora=LoraSpec(r=2, alpha=4, dropout=0.0),
    )
    for name, source in (("sink_projector", "sinks_module"), ("other_projector", "others_module")):
        pairs = zip(getattr(module.strategy, name).parameters(), getattr(files[source].strategy, name).parameters())
        assert all(torch.equal(a, b) for a, b in pairs)
    names = trained_names(module, batch)
    assert {n.split(".")[1] for n in names if n.startswith("strategy.")} == {"sink_projector", "other_projector"}
    assert all("lora_" in n for n in names if not n.startswith("strategy."))
    with pytest.raises(ValueError, match="no other_projector weights"):
        empty = tmp_path / "empty.safetensors"
        save_file({"router.0.weight": torch.zeros(1)}, empty)
        wrap(DualMLP(other_projector_from=str(empty)))


@pytest.mark.parametrize("stage", ["sinks", "both"])
def test_a_stage_checkpoint_reloads_to_the_same_logits(batch, tmp_path, stage, wrap):
    lora = LoraSpec(r=2, alpha=4, dropout=0.0) if stage == "both" else None
    trained = wrap(DualMLP(init="random", stage=stage), lora=lora)
    with torch.no_grad():
        for p in trained.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    torch.save(trained.trainable_state_dict(), tmp_path / "state.pt")
    fresh = wrap(DualMLP(init="random", stage=stage), lora=lora)
    fresh.load_trainable(torch.load(tmp_path / "state.pt", weights_only=True), "state.pt")
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(batch).logits, trained.eval()(batch).logits, atol=0, rtol=0)
