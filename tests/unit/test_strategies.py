"""Training-free strategies on the tiny LLaVA: against plain transformers, exact token sets, batched generation."""

from functools import partial

import pytest
import torch

from sinkflow.data.collate import IGNORE_INDEX, Collator
from sinkflow.data.templates import VicunaV1
from sinkflow.models.families.llava import LlavaFamily
from sinkflow.models.tiny import TinyLlavaSpec, build_tiny_llava
from sinkflow.module import SinkflowModule
from sinkflow.sinks.detectors.adaptive_drop import AdaptiveDrop
from sinkflow.sinks.detectors.base import token_norms
from sinkflow.sinks.detectors.norm_threshold import NormThreshold
from sinkflow.sinks.detectors.topk import TopK
from sinkflow.sinks.simulated import SimulatedSinks
from sinkflow.sinks.strategies.base import STRATEGIES
from sinkflow.sinks.strategies.drop_sinks import DropSinks
from sinkflow.sinks.strategies.random_control import RandomControl
from sinkflow.sinks.strategies.sink_end import SinkEnd
from sinkflow.sinks.strategies.sink_front import SinkFront
from sinkflow.sinks.strategies.sinks_only import SinksOnly

QUESTIONS = ["What is the background color?", "How many shapes are there?", "Is there a red circle in the image?"]


@pytest.fixture(scope="module")
def tiny():
    model, processor = build_tiny_llava(TinyLlavaSpec(seed=1))
    return model.eval(), processor


def wrap(tiny, strategy, detector=None, simulated=None) -> SinkflowModule:
    model, processor = tiny
    return SinkflowModule(model, processor, LlavaFamily(), strategy, detector, simulated_sinks=simulated).eval()


def samples(shapes_root, n=3, answer=True):
    out = []
    for i in range(n):
        turns = [{"from": "human", "value": "<image>\n" + QUESTIONS[i % 3]}]
        if answer:
            turns.append({"from": "gpt", "value": ["red", "3", "No"][i % 3]})
        out.append(
            {"id": f"q{i}", "image": str(shapes_root / "eval_images" / f"eval_{i:05d}.png"), "conversations": turns}
        )
    return out


def natural_norms(tiny, batch):
    with torch.no_grad():
        return token_norms(LlavaFamily().encode(tiny[0], batch).features)


def test_registry_names_every_strategy_config():
    from pathlib import Path

    configs = {p.stem for p in Path("conf/sink_strategy").glob("*.yaml")}
    assert {"none", "sink_front", "sink_end", "drop_sinks", "sinks_only", "random_control"} <= set(STRATEGIES)
    assert set(STRATEGIES) <= configs


@pytest.mark.parametrize(
    "detector", [NormThreshold(tau=100.0), TopK(k=2), AdaptiveDrop(min_ratio=2.0)], ids=lambda d: d.name
)
def test_detector_finds_exactly_the_simulated_sinks(tiny, shapes_root, detector):
    module = wrap(tiny, SinkFront(), detector, SimulatedSinks(k=2, norm=150.0))
    batch = Collator(tiny[1], VicunaV1())(samples(shapes_root, n=12))
    assert natural_norms(tiny, batch).max() < 100.0, "the tiny ViT must have no natural sink above tau"
    with torch.no_grad():
        seen = module.pathway(batch)
    planted, sinks = seen.visual.planted, seen.sinks
    assert planted.sum(dim=1).tolist() == [2] * 12
    assert torch.equal(sinks, planted)
    module.stats["val"].update(token_norms(seen.visual.features), sinks, planted)
    scalars, _ = module.stats["val"].compute()
    assert scalars["sinks/precision"] == 1.0 and scalars["sinks/recall"] == 1.0
    assert scalars["sinks/per_image"] == 2.0 and scalars["sinks/norm_max"] == pytest.approx(150.0)


def test_simulated_sinks_are_a_global_summary_in_the_flattest_patches():
    from sinkflow.pathway import VisualFeatures

    pixels = torch.randn(2, 4, 12)
    pixels[:, 1] = 0.5  # patch 1 is flat in both images
    pixels[:, 3] = -1.0  # patch 3 too (image 1 has only 3 patches: its 4th is padding and never chosen)
    pixels[1, 0] = 0.25
    features = torch.randn(2, 4, 8)
    visual = VisualFeatures(features, lengths=[4, 3])
    planted_features, planted = SimulatedSinks(k=2, norm=150.0)(visual, pixels)
    assert planted[0].nonzero().squeeze(1).tolist() == [1, 3]
    assert planted[1].nonzero().squeeze(1).tolist() == [0, 1]
    for image, (valid, chosen) in enumerate([(4, (1, 3)), (3, (0, 1))]):
        summary = features[image, :valid].mean(dim=0)
        for i in chosen:
            torch.testing.assert_close(planted_features[image, i], summary * 150.0 / summary.norm())
    torch.testing.assert_close(planted_features[0, [0, 2]], features[0, [0, 2]], atol=0, rtol=0)


def reference_logits(tiny, batch, order_of, position_mode):
    """Plain transformers: project the ViT features, permute each image's tokens by hand, scatter, run the LLM."""
    model, _ = tiny
    with torch.no_grad():
        out = model.model.get_image_features(
            batch["pixel_values"],
            vision_feature_layer=-2,
            vision_feature_select_strategy="default",
            output_hidden_states=True,
        )
        raw = out.hidden_states[-2][:, 1:]
        orders = [order_of(raw[i].norm(dim=-1)) for i in range(len(raw))]
        tokens = torch.cat([proj[order] for proj, order in zip(out.pooler_output, orders)])
        ids = batch["input_ids"]
        placeholders = ids == model.config.image_token_id
        embeds = model.get_input_embeddings()(ids).masked_scatter(placeholders.unsqueeze(-1), tokens)
        position_ids = None
        if position_mode == "original":
            position_ids = torch.arange(ids.shape[1]).repeat(len(ids), 1)
            for row, order in enumerate(orders):
                start = int(placeholders[row].nonzero()[0])
                position_ids[row, start : start + len(order)] = start + order
        return model(inputs_embeds=embeds, attention_mask=batch["attention_mask"], position_ids=position_ids).logits


def by_hand(place: str, sort_by_norm: bool, k: int = 3):
    """The permutation of one image's tokens: its k highest-norm tokens at the front or the end."""

    def order_of(norms):
        top = torch.topk(norms, k).indices
        sinks = top if sort_by_norm else top.sort().values
        rest = torch.tensor([i for i in range(len(norms)) if i not in set(top.tolist())])
        return torch.cat([sinks, rest] if place == "front" else [rest, sinks])

    return order_of


@pytest.mark.parametrize("position_mode", ["contiguous", "original"])
@pytest.mark.parametrize("order", ["raster", "norm"])
@pytest.mark.parametrize("place, strategy_cls", [("front", SinkFront), ("end", SinkEnd)])
def test_sink_front_and_end_equal_transformers_with_permuted_features(
    tiny, shapes_root, place, strategy_cls, order, position_mode
):
    module = wrap(tiny, strategy_cls(order=order, position_ids=position_mode), TopK(k=3))
    batch = Collator(tiny[1], VicunaV1())(samples(shapes_root))
    with torch.no_grad():
        ours = module(batch).logits
    theirs = reference_logits(tiny, batch, by_hand(place, order == "norm"), position_mode)
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(ours[mask], theirs[mask], atol=1e-5, rtol=0)


def expected_kept(strategy, visual, sinks):
    n = visual.features.shape[1]
    if isinstance(strategy, DropSinks):
        return [[i for i in range(n) if not s[i]] for s in sinks]
    if isinstance(strategy, SinksOnly):
        return [[i for i in range(n) if s[i]] for s in sinks]
    picked = [set(p.tolist()) for p in strategy.picked(visual, sinks)]
    if strategy.action == "keep":
        return [sorted(p) for p in picked]
    return [[i for i in range(n) if i not in p] for p in picked]


@pytest.mark.parametrize(
    "strategy",
    [DropSinks(), SinksOnly(), RandomControl(action="drop", seed=3), RandomControl(action="keep", seed=3)],
    ids=lambda s: f"{s.name}",
)
def test_token_counts_labels_and_kept_tokens_are_exact(tiny, shapes_root, strategy):
    model, processor = tiny
    module = wrap(tiny, strategy, NormThreshold(tau=100.0), SimulatedSinks(k=2, norm=150.0))
    batch = Collator(processor, VicunaV1())(samples(shapes_root))
    with torch.no_grad():
        seen = module.pathway(batch)
        merged = seen.inputs
        projected = torch.stack(LlavaFamily().project(model, seen.visual))
    visual, sinks = seen.visual, seen.sinks
    kept = expected_kept(strategy, visual, sinks)
    n_tokens = visual.features.shape[1]
    embed = model.get_input_embeddings()
    placeholders = batch["input_ids"] == model.config.image_token_id
    for row in range(3):
        real = int(batch["attention_mask"][row].sum())
        start = int(placeholders[row].nonzero()[0])
        n_kept = len(kept[row])
        assert int(merged["attention_mask"][row].sum()) == real - n_tokens + n_kept
        block = merged["inputs_embeds"][row, start : start + n_kept]
        torch.testing.assert_close(block, projected[row, kept[row]], atol=0, rtol=0)
        with torch.no_grad():
            text = embed(batch["input_ids"][row, start + n_tokens : real])
        torch.testing.assert_close(
            merged["inputs_embeds"][row, start + n_kept : real - n_tokens + n_kept], text, atol=0, rtol=0
        )
        # Labels: the same supervised tokens, shifted by the change in visual tokens, none inside the image block.
        old, new = batch["labels"][row], merged["labels"][row]
        old_at, new_at = (old != IGNORE_INDEX).nonzero().squeeze(1), (new != IGNORE_INDEX).nonzero().squeeze(1)
        assert torch.equal(old[old_at], new[new_at]) and len(new_at) > 0
        assert torch.equal(new_at, old_at - n_tokens + n_kept)
        assert not merged["attention_mask"][row, real - n_tokens + n_kept :].any()  # right padding stays right
    if isinstance(strategy, RandomControl):
        picked = strategy.picked(visual, sinks)
        assert all(not (s[p]).any() and len(p) == int(s.sum()) for s, p in zip(sinks, picked))


def test_random_control_is_seeded_per_image(tiny, shapes_root):
    module = wrap(tiny, RandomControl(), TopK(k=4))
    batch = Collator(tiny[1], VicunaV1())(samples(shapes_root, n=12))
    with torch.no_grad():
        seen = module.pathway(batch)
    visual, sinks = seen.visual, seen.sinks
    first = RandomControl(seed=0).picked(visual, sinks)
    assert all(torch.equal(a, b) for a, b in zip(first, RandomControl(seed=0).picked(visual, sinks)))
    assert any(not torch.equal(a, b) for a, b in zip(first, RandomControl(seed=1).picked(visual, sinks)))
    assert len({tuple(p.tolist()) for p in first}) > 1, "images must not share one random pattern"
    assert all(not s[p].any() for s, p in zip(sinks, first))


def varied_threshold(norms: torch.Tensor) -> float:
    """A tau that gives every image of the batch a different sink count (one of them none)."""
    for tau in sorted(set(norms.flatten().tolist())):
        counts = (norms >= tau).sum(dim=1).tolist()
        if len(set(counts)) == len(counts) and 0 in counts:
            return tau
    raise AssertionError(f"no threshold separates the images: {norms}")


GENERATION_STRATEGIES = [
    SinkFront(),
    SinkFront(order="norm", position_ids="original"),
    SinkEnd(),
    DropSinks(),
    DropSinks(position_ids="original"),
    SinksOnly(),
    RandomControl(),
    RandomControl(action="keep"),
]


@pytest.mark.parametrize("strategy", GENERATION_STRATEGIES, ids=lambda s: f"{s.name}-{s.position_ids}")
def test_batched_generation_equals_one_at_a_time(tiny, shapes_root, strategy):
    collate = Collator(tiny[1], VicunaV1(), generate=True)
    items = samples(shapes_root, answer=False)
    batch = collate(items)
    tau = varied_threshold(natural_norms(tiny, batch))
    module = wrap(tiny, strategy, NormThreshold(tau=tau))
    module.generation.max_new_tokens = 6
    batched = module.generate(batch)
    alone = [module.generate(collate([item]))[0] for item in items]
    assert batched == alone
    assert all(len(text) > 0 for text in batched)


def test_a_strategy_that_needs_sinks_refuses_to_run_without_a_detector(tiny):
    with pytest.raises(ValueError, match="'drop_sinks' needs a detector: set sink_strategy.detector"):
        wrap(tiny, DropSinks())


@pytest.mark.parametrize(
    "strategy",
    [DropSinks(), SinksOnly(), SinkFront(position_ids="original")],
    ids=lambda s: f"{s.name}-{s.position_ids}",
)
def test_training_backpropagates_through_routed_tokens(shapes_root, strategy, simulated_llava):
    from sinkflow.models.build import LoraSpec, prepare_for_training

    prepare = partial(prepare_for_training, family=LlavaFamily(), lora=LoraSpec(r=2, alpha=4))
    module = simulated_llava(strategy, seed=1, prepare=prepare).train()
    processor = module.processor
    loss = module(Collator(processor, VicunaV1())(samples(shapes_root))).loss
    loss.backward()
    projector = [p for p in module.family.projector(module.hf).parameters()]
    assert torch.isfinite(loss) and all(p.grad is not None and p.grad.abs().sum() > 0 for p in projector)
