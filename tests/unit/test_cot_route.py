"""DIYSink CoT routing: the answers' parsing, the routes' inputs, the routing pass, and the recorded decisions."""

import json
from functools import partial
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from sinkflow.data.collate import Collator, first_question
from sinkflow.data.templates import VicunaV1
from sinkflow.models.families.llava import LlavaFamily
from sinkflow.models.tiny import TinyLlavaSpec, build_tiny_llava
from sinkflow.module import SinkflowModule
from sinkflow.sinks.detectors.norm_threshold import NormThreshold
from sinkflow.sinks.routing_answers import decide
from sinkflow.sinks.strategies.cot_route import CotRoute
from sinkflow.sinks.strategies.drop_sinks import DropSinks
from sinkflow.sinks.strategies.sink_front import SinkFront
from sinkflow.sinks.strategies.sinks_only import SinksOnly

CONF = Path(__file__).resolve().parents[2] / "conf"
QUESTIONS = ["What is the background color?", "Is there a red circle in the image?"]


@pytest.mark.parametrize(
    "image_answer, question_answer, image, scope, route",
    [
        ("symbolic", "global", "symbolic", "global", "sinks_only"),
        ("Symbolic.", "Global", "symbolic", "global", "sinks_only"),
        ("It is a simple diagram.", "holistic understanding", "symbolic", "global", "sinks_only"),
        ("real-world", "local", "real_world", "local", "others_only"),
        ("A complex real world photo", "It needs local detail.", "real_world", "local", "others_only"),
        ("not symbolic, a real-world photo", "local", "real_world", "local", "others_only"),
        ("symbolic, not a real-world photo", "not global but local", "symbolic", "local", "both"),
        ("real-world", "global", "real_world", "global", "both"),
        ("symbolic", "local", "symbolic", "local", "both"),
        ("", "", "unknown", "unknown", "both"),
        ("banana", "globally", "unknown", "unknown", "both"),  # whole words only: "globally" is not "global"
        ("realistic", "the whole image", "unknown", "global", "both"),
    ],
)
def test_answers_parse_to_decisions(image_answer, question_answer, image, scope, route, wrap):
    decision = decide(image_answer, question_answer)
    assert (decision["image"], decision["question"], decision["route"]) == (image, scope, route)
    assert (decision["image_answer"], decision["question_answer"]) == (image_answer, question_answer)


@pytest.fixture()
def wrap(simulated_llava):
    """A module that can ask the model (a generation collator with LLaVA's template)."""

    def build(strategy, seed=4):
        module = simulated_llava(strategy, seed=seed).eval()
        module.question_collator = Collator(module.processor, VicunaV1(), generate=True)
        return module

    return build


def samples_for(shapes_root, questions, images=(0, 1)):
    return [
        {
            "id": str(i),
            "image": str(shapes_root / "eval_images" / f"eval_{img:05d}.png"),
            "conversations": [{"from": "human", "value": "<image>\n" + q}],
        }
        for i, (img, q) in enumerate(zip(images, questions))
    ]


@pytest.mark.parametrize(
    "answers, reference",
    [
        (("symbolic", "global"), SinksOnly()),
        (("real-world", "local"), DropSinks()),
        (("symbolic", "local"), SinkFront()),
    ],
)
def test_with_copied_projectors_each_route_is_the_training_free_strategy(
    shapes_root, routing_prompts, answers, reference, wrap
):
    """Copies of the model's projector: sinks only == sinks_only, non-sinks only == drop_sinks, both == sink_front."""
    module, plain = wrap(CotRoute(**routing_prompts)), wrap(reference)
    batch = Collator(module.processor, VicunaV1(), generate=True)(samples_for(shapes_root, QUESTIONS))
    asked = []

    def ask(questions, images, routed, max_new_tokens, expected):
        asked.append((questions, images))
        return [answers[0]] * 2 + [answers[1]] * 2

    with torch.no_grad():
        visual = module.visual(batch)
        sinks = module.family.token_sinks(module.detector, visual)
        routed = module.strategy(visual, sinks, partial(module.family.project, module.hf), ask=ask)
        expected = plain.strategy(visual, sinks, partial(plain.family.project, plain.hf))
    image_prompt, question_prompt = routing_prompts["image_prompt"], routing_prompts["question_prompt"]
    questions = [image_prompt] * 2 + [question_prompt.replace("{question}", q) for q in QUESTIONS]
    assert asked == [(questions, [0, 1, 0, 1])]  # both questions about both images in one call
    assert [d["route"] for d in routed.decisions] == [decide(*answers)["route"]] * 2
    assert all(torch.equal(a, b) for a, b in zip(routed.sources, expected.sources))
    assert all(torch.equal(a, b) for a, b in zip(routed.tokens, expected.tokens))


def test_the_routing_pass_answers_as_if_the_routing_question_were_asked(shapes_root, routing_prompts, wrap):
    """`ask` equals generating from a batch collated with the routing question, through the full Dual-MLP input."""
    module, front = wrap(CotRoute(**routing_prompts)), wrap(SinkFront())
    image_prompt = routing_prompts["image_prompt"]
    collate = Collator(module.processor, VicunaV1(), generate=True)
    batch = collate(samples_for(shapes_root, QUESTIONS))
    with torch.no_grad():
        visual = module.visual(batch)
        sinks = module.family.token_sinks(module.detector, visual)
        both = front.strategy(visual, sinks, partial(front.family.project, front.hf))
        answers = module.ask(batch, visual, [image_prompt] * 2, [0, 1], both, 6)
        front.generation.max_new_tokens = 6
        expected = [a.strip() for a in front.generate(collate(samples_for(shapes_root, [image_prompt] * 2)))]
    assert answers == expected


def test_decisions_are_recorded_per_prediction_and_training_sees_both_blocks(shapes_root, routing_prompts, wrap):
    module = wrap(CotRoute(**routing_prompts))
    samples = samples_for(shapes_root, QUESTIONS)
    samples.insert(1, {"id": "text", "image": None, "conversations": [{"from": "human", "value": "Hello?"}]})
    for s in samples:
        s["meta"] = {"benchmark": "open", "question": "q", "answer": "a"}
    batch = Collator(module.processor, VicunaV1(), generate=True)(samples)
    records, seen = module._answer(batch)
    decisions = seen.routed.decisions
    per_image = seen.routed.decision_seconds / 2  # each decision carries its image's share of the deciding time
    assert per_image > 0
    assert [r.get("routing") for r in records] == [
        dict(decisions[0], seconds=per_image),
        None,
        dict(decisions[1], seconds=per_image),
    ]
    module.train()
    seen = module.pathway(batch)
    assert seen.routed.decisions is None and [len(t) for t in seen.routed.tokens] == [16, 16]


def test_projectors_stay_frozen_unless_asked_and_bad_prompts_are_named(routing_prompts, wrap):
    assert not any(p.requires_grad for p in wrap(CotRoute(**routing_prompts)).strategy.parameters())
    assert all(p.requires_grad for p in wrap(CotRoute(**routing_prompts, train_projectors=True)).strategy.parameters())
    with pytest.raises(ValueError, match=r"question_prompt` must contain '\{question\}'"):
        CotRoute(routing_prompts["image_prompt"], question_prompt="Global or local?")


def test_copied_projectors_follow_a_checkpoint_trained_without_strategy_weights(routing_prompts):
    """Routing a `none`-trained checkpoint: the copies are taken from its trained projector, not the base one."""
    from sinkflow.models.build import prepare_for_training
    from sinkflow.sinks.strategies.none import NoneStrategy

    def frozen_but_projector(strategy):
        model, processor = build_tiny_llava(TinyLlavaSpec(seed=4))
        model = prepare_for_training(model, LlavaFamily(), lora=None, train_projector=True)
        return SinkflowModule(model, processor, LlavaFamily(), strategy, NormThreshold(tau=100.0))

    trained = frozen_but_projector(NoneStrategy())
    with torch.no_grad():
        for p in LlavaFamily().projector(trained.hf).parameters():
            p.add_(0.25)
    routed = frozen_but_projector(CotRoute(**routing_prompts))
    routed.load_trainable(trained.trainable_state_dict(), "none.ckpt")
    expected = LlavaFamily().projector(trained.hf).state_dict()
    for copy in (routed.strategy.sink_projector, routed.strategy.other_projector):
        assert all(torch.equal(v, expected[k]) for k, v in copy.state_dict().items())
    assert not any(p.requires_grad for p in routed.parameters())


def test_asking_needs_a_question_collator_and_one_question_per_image(shapes_root, routing_prompts):
    model, processor = build_tiny_llava(TinyLlavaSpec(seed=4))
    batch = Collator(processor, VicunaV1(), generate=True)(samples_for(shapes_root, QUESTIONS))
    with pytest.raises(ValueError, match="create the collator with generate=True"):
        Collator(processor, VicunaV1()).ask(batch, QUESTIONS)
    with pytest.raises(ValueError, match="1 questions for 2 images to ask about"):
        Collator(processor, VicunaV1(), generate=True).ask(batch, QUESTIONS[:1])
    module = SinkflowModule(
        model, processor, LlavaFamily(), CotRoute(**routing_prompts), NormThreshold(tau=100.0)
    ).eval()
    with pytest.raises(
        ValueError, match="strategy 'cot_route' asks the model questions: give SinkflowModule a question_collator"
    ):
        module.generate(batch)


def test_the_configured_prompts_are_what_cot_route_asks_and_what_the_shapes_routing_records_teach(
    tmp_path, routing_prompts
):
    """conf/routing/ is the one source: an edited prompt reaches the strategy, and regenerates the training data's
    routing records (same root: the prompts are in the manifest's parameters) while the other records stay."""
    edited = "Global or local: {question}"
    records = {}
    for question_prompt, edit in (
        (routing_prompts["question_prompt"], []),
        (edited, [f"routing.question_prompt='{edited}'"]),
    ):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(
                config_name="train",
                overrides=[
                    "sink_strategy=cot_route",
                    "dataset.prepare.routing_questions=true",
                    "dataset.prepare.n_train=6",
                    "dataset.prepare.n_eval=1",
                    f"dataset.prepare.root={tmp_path / 'shapes'}",
                    *edit,
                ],
            )
        strategy = instantiate(cfg.sink_strategy.strategy)
        assert (strategy.image_prompt, strategy.question_prompt) == (routing_prompts["image_prompt"], question_prompt)
        root = instantiate(cfg.dataset.prepare)()
        train = json.loads((root / "train.json").read_text())
        questions, routing = train[:6], train[6:]
        assert [r["conversations"][0]["value"] for r in routing] == [
            "<image>\n"
            + (
                routing_prompts["image_prompt"]
                if i % 2
                else question_prompt.replace("{question}", first_question(r["conversations"]))
            )
            for i, r in enumerate(questions)
        ]
        records[question_prompt] = questions, routing
    (default_questions, default_routing), (edited_questions, edited_routing) = records.values()
    assert edited_questions == default_questions
    assert edited_routing[1::2] == default_routing[1::2] and edited_routing[0::2] != default_routing[0::2]
