"""DIYSink ReW: question-conditioned block weights that start at 1, ignore the image, and are all that trains."""

from functools import partial

import pytest
import torch
from safetensors.torch import save_file

from sinkflow.data.collate import Collator
from sinkflow.data.templates import VicunaV1
from sinkflow.models.build import prepare_for_training
from sinkflow.models.families.llava import LlavaFamily
from sinkflow.sinks.strategies.dual_mlp import DualMLP
from sinkflow.sinks.strategies.reweight import Reweight


@pytest.fixture()
def wrap(simulated_llava):
    """ReW's training setting: the model frozen (no LoRA, projector not trained); the strategy decides the rest."""

    def build(strategy, seed=6):
        prepare = partial(prepare_for_training, family=LlavaFamily(), lora=None, train_projector=False)
        return simulated_llava(strategy, seed=seed, prepare=prepare)

    return build


def batch_for(module, shapes_root, questions, images=(0, 1)):
    samples = [
        {
            "id": str(i),
            "image": str(shapes_root / "eval_images" / f"eval_{img:05d}.png"),
            "conversations": [{"from": "human", "value": "<image>\n" + q}, {"from": "gpt", "value": "red"}],
        }
        for i, (img, q) in enumerate(zip(images, questions))
    ]
    return Collator(module.processor, VicunaV1())(samples)


@pytest.mark.parametrize("activation", ["softplus", "sigmoid2", "exp"])
def test_weights_start_at_one_so_rew_starts_as_dual_mlp(shapes_root, tiny_encoder, activation, wrap):
    rew, dual = wrap(Reweight(encoder=tiny_encoder, activation=activation)), wrap(DualMLP())
    batch = batch_for(rew, shapes_root, ["What is the background color?", "How many shapes are there?"])
    with torch.no_grad():
        seen = rew.eval().pathway(batch)
        theirs = dual.eval().pathway(batch).inputs
        weights = rew.strategy.block_weights(seen.visual, 2)
    assert torch.equal(weights, torch.ones(2, 2))
    torch.testing.assert_close(seen.inputs["inputs_embeds"], theirs["inputs_embeds"], atol=0, rtol=0)


def test_router_reads_the_question_not_the_image(shapes_root, tiny_encoder, wrap):
    module = wrap(Reweight(encoder=tiny_encoder)).eval()
    torch.nn.init.normal_(module.strategy.router[-1].weight, std=1.0)  # a trained router, not the identity start
    same = ["What is the background color?"] * 2
    with torch.no_grad():
        a = module.pathway(batch_for(module, shapes_root, same, images=(0, 1)))
        b = module.pathway(batch_for(module, shapes_root, same, images=(2, 3)))
        c = module.pathway(
            batch_for(module, shapes_root, ["What is the background color?", "Is there a red circle in the image?"])
        )
        weights = [module.strategy.block_weights(seen.visual, 2) for seen in (a, b, c)]
    torch.testing.assert_close(weights[0], weights[1], atol=0, rtol=0)  # other images, same questions
    assert torch.equal(weights[0][0], weights[0][1]) and not torch.allclose(weights[2][0], weights[2][1])


def test_only_the_router_trains_and_projectors_load_from_a_dual_mlp_run(shapes_root, tiny_encoder, tmp_path, wrap):
    dual = wrap(DualMLP())
    with torch.no_grad():
        for p in dual.strategy.parameters():
            p.add_(0.5)
    path = tmp_path / "strategy.safetensors"
    save_file({k: v.contiguous() for k, v in dual.strategy.state_dict().items()}, path)
    module = wrap(Reweight(encoder=tiny_encoder, projectors=str(path))).train()
    for name in ("sink_projector", "other_projector"):
        pairs = zip(getattr(module.strategy, name).parameters(), getattr(dual.strategy, name).parameters())
        assert all(torch.equal(mine, theirs) for mine, theirs in pairs)
    module(batch_for(module, shapes_root, ["What is the background color?", "How many?"])).loss.backward()
    with_grad = {n for n, p in module.named_parameters() if p.grad is not None}
    assert with_grad == {n for n, _ in module.named_parameters() if n.startswith("strategy.router.")}
    assert with_grad == {n for n, p in module.named_parameters() if p.requires_grad}
    with pytest.raises(ValueError, match="`sink_strategy.strategy.activation` must be one of"):
        Reweight(encoder=tiny_encoder, activation="relu")


def test_the_encoder_cache_returns_the_uncached_embeddings(tiny_encoder):
    from sinkflow.models.encoders import SentenceEncoder

    encoder = SentenceEncoder(tiny_encoder, cache_size=3)
    texts = ["What is the background color?", "How many shapes are there?", "What is the background color?"]
    first = encoder(texts)
    assert set(encoder.cache) == set(texts) and torch.equal(first, encoder.encode(texts))
    assert torch.equal(encoder(texts), first)
    more = ["Is there a red circle?", "left or right?"]  # over the cache size: encoded without caching
    assert torch.equal(encoder(more), encoder.encode(more)) and len(encoder.cache) == 2
