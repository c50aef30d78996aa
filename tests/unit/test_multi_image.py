"""Several images in one prompt: collation, every family against plain transformers, routing per image, records."""

import copy
import inspect
import json
import re
from pathlib import Path

import pytest
import torch
import transformers
from PIL import Image
from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

from sinkflow.data.collate import Collator
from sinkflow.data.datamodule import eval_sample
from sinkflow.data.errors import DataFormatError
from sinkflow.data.instruct import load_instruct
from sinkflow.data.templates import IMAGE_TOKEN, VICUNA_V1_SYSTEM, ProcessorChatTemplate, VicunaV1
from sinkflow.eval.metrics import routing_metrics
from sinkflow.models.families.base import FAMILIES
from sinkflow.models.tiny import TinyLlavaSpec, build_tiny_llava
from sinkflow.module import SinkflowModule
from sinkflow.pathway import Routed
from sinkflow.sinks.detectors.topk import TopK
from sinkflow.sinks.strategies.none import NoneStrategy
from sinkflow.sinks.strategies.sink_front import SinkFront

# A question about two images, the first one inside the text: (text, image, text, image, text).
TWO = ("Compare ", IMAGE_TOKEN, " with ", IMAGE_TOKEN, ": which one has more shapes?")
ONE = "What is the background color?"


@pytest.fixture(scope="module")
def images(resized_images):
    """Three different images in two sizes (Qwen keeps each size, so the two images of a row differ in tokens)."""
    return resized_images([(64, 64), (48, 32), (32, 48)])


def tiny(tiny_family, family_name: str):
    """The family's tiny model in eval mode, with its processor, family and template."""
    model, processor, family, template = tiny_family(family_name, 5)
    return model.eval(), processor, family, template


def two_image(images, sample_id="two", meta=None) -> dict:
    sample = {"id": sample_id, "image": images[:2], "conversations": [{"from": "human", "value": "".join(TWO)}]}
    return {**sample, "meta": meta} if meta else sample


def one_image(image, sample_id="one") -> dict:
    return {"id": sample_id, "image": image, "conversations": [{"from": "human", "value": f"{IMAGE_TOKEN}\n{ONE}"}]}


def text_only(sample_id="text") -> dict:
    return {"id": sample_id, "image": None, "conversations": [{"from": "human", "value": "Name a colour."}]}


def hf_processor(model, processor, monkeypatch):
    """The model type's own transformers processor. The classes that also build a video processor (Qwen, InternVL)
    need torchvision, absent here (docs/models.md#qwen-processors): such a class is built by its own `__init__` around
    the same tokenizer and image processor, without a video processor (ProcessorMixin's class check skipped for the
    absent one), with the options our processor carries under the class's argument names; its `__call__` and chat
    template are transformers' own."""
    if isinstance(processor, transformers.ProcessorMixin):
        return processor
    cls = getattr(transformers, PROCESSOR_MAPPING_NAMES[model.config.model_type])
    check = transformers.ProcessorMixin.check_argument_for_proper_class
    monkeypatch.setattr(
        transformers.ProcessorMixin,
        "check_argument_for_proper_class",
        lambda self, name, argument: None if argument is None else check(self, name, argument),
    )
    given = ("self", "kwargs", "image_processor", "tokenizer", "video_processor", "chat_template")
    options = {
        name: getattr(processor, name)
        for name in inspect.signature(cls.__init__).parameters
        if name not in given and hasattr(processor, name)
    }
    return cls(
        image_processor=processor.image_processor,
        tokenizer=processor.tokenizer,
        video_processor=None,
        chat_template=processor.chat_template,
        **options,
    )


def same_tiles(ours: torch.Tensor, theirs: torch.Tensor) -> bool:
    """Equal tensors; or, for per-tile tensors [rows, tiles, ...] that group the same tiles differently (Idefics3's
    processor stacks each prompt's crops in a row, zero-padded; the collator stacks the whole batch's in one row), the
    same non-zero tiles in the same order."""
    if ours.shape == theirs.shape:
        return torch.equal(ours, theirs)

    def tiles(values: torch.Tensor) -> torch.Tensor:
        flat = values.flatten(0, 1)
        return flat[flat.flatten(1).ne(0).any(dim=1)]

    return ours.dim() == theirs.dim() >= 3 and torch.equal(tiles(ours), tiles(theirs))


def reference_prompt(template, hf, parts: tuple[str, ...]) -> str:
    """The generation prompt as the model's own convention writes a question with images at `parts`' image tokens:
    vicuna_v1 (LLaVA-1.5) by hand, a chat template through transformers' processor with image content parts."""
    if isinstance(template, VicunaV1):
        return f"{VICUNA_V1_SYSTEM} USER: {''.join(parts)} ASSISTANT:"
    content = [{"type": "image"} if p == IMAGE_TOKEN else {"type": "text", "text": p.lstrip("\n")} for p in parts]
    return hf.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)


@pytest.mark.parametrize("family_name", FAMILIES.names())
def test_two_images_in_one_question_equal_transformers(family_name, images, assert_parity, tiny_family, monkeypatch):
    """Strategy `none` on a row holding two image blocks (and a one-image row, for padding): the processor's own
    multi-image expansion (every tensor both batches have), the same logits and the same greedy text as plain
    transformers."""
    model, processor, family, template = tiny(tiny_family, family_name)
    reference = copy.deepcopy(model)
    module = SinkflowModule(model, processor, family, NoneStrategy()).eval()
    module.generation.max_new_tokens = 4
    batch = Collator(processor, template, generate=True)([two_image(images), one_image(images[2])])
    hf = hf_processor(reference, processor, monkeypatch)
    texts = [reference_prompt(template, hf, TWO), reference_prompt(template, hf, (IMAGE_TOKEN, "\n" + ONE))]
    assert [meta["prompt"] for meta in batch["meta"]] == texts
    expected = hf(
        # Per row, its images: transformers' batched form (some processors cannot split a flat list between rows).
        images=[[Image.open(p).convert("RGB") for p in row] for row in (images[:2], images[2:])],
        text=texts,
        return_tensors="pt",
        padding=True,
        padding_side="left",
    )
    shared = [key for key, value in expected.items() if torch.is_tensor(value) and torch.is_tensor(batch.get(key))]
    assert {"input_ids", "attention_mask", "pixel_values"} <= set(shared)
    for key in shared:
        assert same_tiles(batch[key], expected[key]), key
    image_id = family.image_token_id(model)
    per_row = (batch["input_ids"] == image_id).sum(dim=1).tolist()
    with torch.no_grad():
        blocks = family.encode(model, batch).blocks  # each image's placeholders (fixed tokens included)
    assert len(blocks) == 3 and per_row == [blocks[0] + blocks[1], blocks[2]]
    assert (batch["attention_mask"] == 0).any(), "the batch must exercise padding"
    assert_parity(module, reference, batch, dict(expected))


@pytest.mark.parametrize(
    "strategy",
    [NoneStrategy(), SinkFront(), SinkFront(position_ids="original")],
    ids=lambda s: f"{s.name}-{s.position_ids}",
)
@pytest.mark.parametrize("family_name", FAMILIES.names())
def test_batched_generation_of_one_two_and_no_image_equals_each_alone(family_name, strategy, images, tiny_family):
    model, processor, family, template = tiny(tiny_family, family_name)
    module = SinkflowModule(model, processor, family, strategy, TopK(k=3)).eval()
    module.generation.max_new_tokens = 4
    collate = Collator(processor, template, generate=True)
    items = [one_image(images[2], "a"), two_image(images, "b"), text_only("c"), two_image(images[1:], "d")]
    batched = module.generate(collate(items))
    alone = [module.generate(collate([item]))[0] for item in items]
    assert batched == alone and all(batched[i] for i in (0, 1, 3))


def as_placed(order: torch.Tensor, runs: list[int]) -> torch.Tensor:
    """An image's routed order as its placeholder runs receive it (`VisualFeatures.runs`): each run its own tokens,
    in routed order."""
    run = torch.bucketize(order, torch.tensor(runs, device=order.device).cumsum(0), right=True)
    return order[torch.argsort(run, stable=True)]


def block_columns(batch: dict, row: int, image_id: int, slots: list[int]) -> list[torch.Tensor]:
    """The placeholder columns of each image block of a row, in order."""
    columns = (batch["input_ids"][row] == image_id).nonzero().squeeze(1)
    return list(columns.split(slots))


@pytest.mark.parametrize("position_ids", ["contiguous", "original"])
@pytest.mark.parametrize("family_name", FAMILIES.names())
def test_sink_front_moves_each_images_sinks_within_its_own_block(family_name, position_ids, images, tiny_family):
    """Each block holds its own image's tokens, sinks first, in its visual slots (a layout's fixed tokens stay in
    theirs; in each of its placeholder runs, when it has several); with `original` each token keeps its position in
    its own block (Qwen: its own image's (t, h, w))."""
    model, processor, family, template = tiny(tiny_family, family_name)
    detector = TopK(k=3)
    module = SinkflowModule(model, processor, family, SinkFront(position_ids=position_ids), detector).eval()
    batch = Collator(processor, template, generate=True)([two_image(images)])
    with torch.no_grad():
        inputs = module.pathway(batch, padding_side="left").inputs
        visual = module.visual(batch)
        projected = family.project(model, visual)
        sinks = family.token_sinks(detector, visual)
        unrouted = family.position_ids(model, batch)
    if unrouted is None:
        unrouted = (batch["attention_mask"].cumsum(-1) - 1).clamp_min(0)[None]
    orders = []
    for i, (mask, n) in enumerate(zip(sinks, visual.slots)):
        order = torch.cat([mask[:n].nonzero().squeeze(1), (~mask[:n]).nonzero().squeeze(1)])
        orders.append(as_placed(order, visual.runs[i] if visual.runs else [n]))
        assert not torch.equal(orders[-1], torch.arange(n)), "the sinks must really move"
    blocks = block_columns(batch, 0, family.image_token_id(model), visual.blocks)
    layouts = [layout.cpu() for layout in visual.layouts] or [torch.ones(n, dtype=torch.bool) for n in visual.slots]
    fixed = family.fixed_tokens(model, visual) if visual.layouts else [tokens[:0] for tokens in projected]
    assert inputs["inputs_embeds"].shape == (1, batch["input_ids"].shape[1], projected[0].shape[-1])
    for columns, layout, tokens, order, kept in zip(blocks, layouts, projected, orders, fixed):
        torch.testing.assert_close(inputs["inputs_embeds"][0, columns[layout]], tokens[order], atol=0, rtol=0)
        torch.testing.assert_close(inputs["inputs_embeds"][0, columns[~layout]], kept, atol=0, rtol=0)
    if position_ids == "original":
        routed_positions = inputs["position_ids"].reshape(-1, *batch["input_ids"].shape)
        for columns, layout, order in zip(blocks, layouts, orders):
            fixed_columns, visual_columns = columns[~layout], columns[layout]
            assert torch.equal(routed_positions[:, 0, fixed_columns], unrouted[:, 0, fixed_columns])
            assert torch.equal(routed_positions[:, 0, visual_columns], unrouted[:, 0, visual_columns[order]])
    elif "position_ids" in inputs:  # M-RoPE, passed on unchanged: blocks keep their ids in order
        assert torch.equal(inputs["position_ids"], unrouted)


@pytest.mark.parametrize("family_name", FAMILIES.names())
def test_patch_pixels_and_seen_images_map_each_image_of_a_row(family_name, images, tiny_family):
    """A row's images are read out one by one, as when each image has a row of its own (or, where the processor treats
    the images of a several-image question unlike a lone one, as beside another partner: LLaVA-OneVision tiles a lone
    image only)."""
    model, processor, family, template = tiny(tiny_family, family_name)
    collate = Collator(processor, template, generate=True)
    together = collate([two_image(images)])
    if "batch_num_images" in together:
        apart, index = [collate([two_image([images[0], images[2]])]), collate([two_image(images[2:0:-1])])], [0, 1]
    else:
        apart, index = [collate([one_image(path)]) for path in images[:2]], [0, 0]
    with torch.no_grad():
        visual = family.encode(model, together)
        pixels = family.patch_pixels(together, visual)
        alone = [family.patch_pixels(b, family.encode(model, b))[k] for b, k in zip(apart, index)]
        own = [family.encode(model, b) for b in apart]
    for i, expected in enumerate(alone):
        assert visual.lengths[i] == own[i].lengths[index[i]]
        assert torch.equal(pixels[i, : len(expected)], expected)
        features = own[i].features[index[i], : visual.lengths[i]]
        torch.testing.assert_close(visual.features[i, : visual.lengths[i]], features, atol=1e-5, rtol=0)
    try:
        seen = family.seen_images(together, processor)
    except NotImplementedError:
        return
    for image, batch, k in zip(seen, apart, index):
        assert torch.equal(image, family.seen_images(batch, processor)[k])


@pytest.fixture(scope="module")
def llava_processor():
    return build_tiny_llava(TinyLlavaSpec())[1]


def test_the_bookkeeping_is_per_image_and_unchanged_for_one_image(llava_processor, images):
    """Keys: the sample key for a first image (so one-image keys never change), `#k` after it; the question is
    repeated for each image of its sample; `image_samples` is the row of each image."""
    samples = [
        one_image(images[0], "1"),
        two_image(images, "2", meta={"benchmark": "mmmu"}),
        text_only("3"),
        {**one_image(images[2], "4"), "meta": {"benchmark": "pope"}},
    ]
    batch = Collator(llava_processor, VicunaV1(), generate=True)(samples)
    assert batch["image_keys"] == ["1", "mmmu/2", "mmmu/2#1", "pope/4"]
    question = "Compare  with : which one has more shapes?"  # the placeholders removed
    assert batch["image_questions"] == [ONE, question, question, ONE]
    assert batch["image_samples"] == [0, 1, 1, 3]
    assert batch["pixel_values"].shape[0] == 4
    single = Collator(llava_processor, VicunaV1(), generate=True)([one_image(images[0], "1")])
    assert (single["image_keys"], single["image_questions"], single["image_samples"]) == (["1"], [ONE], [0])


def test_labels_stay_on_the_answers_after_several_expansions(llava_processor, images):
    """Answer spans after two image blocks move by both expansions (and one between them by one)."""
    conversation = [
        {"from": "human", "value": f"{IMAGE_TOKEN}\nFirst?"},
        {"from": "gpt", "value": "red"},
        {"from": "human", "value": f"And {IMAGE_TOKEN}?"},
        {"from": "gpt", "value": "blue"},
    ]
    batch = Collator(llava_processor, VicunaV1())([{"id": "t", "image": images[:2], "conversations": conversation}])
    supervised = batch["input_ids"][0][batch["labels"][0] != -100]
    assert llava_processor.tokenizer.decode(supervised) == " red</s> blue</s>"


@pytest.mark.parametrize(
    ("image", "value", "message"),
    [
        (2, f"{IMAGE_TOKEN}\nOne placeholder.", "sample 's': 1 <image> tokens in the conversation for 2 images"),
        (1, f"{IMAGE_TOKEN} and {IMAGE_TOKEN}?", "sample 's': 2 <image> tokens in the conversation for one image"),
        (0, f"{IMAGE_TOKEN}?", "sample 's': 1 <image> tokens in the conversation for no image"),
    ],
)
def test_placeholders_must_match_the_images(llava_processor, images, image, value, message):
    paths = {0: None, 1: images[0], 2: images[:2]}[image]
    sample = {"id": "s", "image": paths, "conversations": [{"from": "human", "value": value}]}
    with pytest.raises(ValueError, match=f"^{re.escape(message)}; expected exactly one per image$"):
        Collator(llava_processor, VicunaV1())([sample])


def test_an_unreadable_second_image_names_its_file_and_the_question(llava_processor, images, tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_text("not an image")
    with pytest.raises(OSError, match=f"^cannot read image {re.escape(str(corrupt))} \\(question 'mmmu_3'\\)"):
        Collator(llava_processor, VicunaV1())([two_image([images[0], str(corrupt)], "mmmu_3")])


def test_an_image_the_processor_rejects_is_named_among_a_samples_images(images, tmp_path, tiny_family):
    _, processor, _, template = tiny(tiny_family, "qwen2_vl")
    thin = tmp_path / "thin.png"
    Image.new("RGB", (1, 300)).save(thin)
    with pytest.raises(ValueError, match=f"^cannot process image {re.escape(str(thin))} \\(question 'q'\\): "):
        Collator(processor, template)([two_image([images[0], str(thin)], "q")])


def test_the_chat_template_puts_each_image_where_its_token_is():
    message = ProcessorChatTemplate._message("user", f"Compare {IMAGE_TOKEN}\nwith{IMAGE_TOKEN}.")
    assert message["content"] == [
        {"type": "text", "text": "Compare "},
        {"type": "image"},
        {"type": "text", "text": "with"},
        {"type": "image"},
        {"type": "text", "text": "."},
    ]
    # One image first, as every one-image sample writes it: as before.
    assert ProcessorChatTemplate._message("user", f"{IMAGE_TOKEN}\nQ?")["content"] == [
        {"type": "image"},
        {"type": "text", "text": "Q?"},
    ]


def test_the_routing_pass_asks_about_every_image(images, tiny_family):
    """`Collator.ask` (cot_route) puts one question on each image of a several-image sample (by default), or on the
    images it is given by index, each placeholder expanded for its image; the prompts carry no image tensors."""
    _, processor, family, template = tiny(tiny_family, "qwen2_vl")
    collate = Collator(processor, template, generate=True)
    batch = collate([two_image(images), one_image(images[2])])
    image_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    per_image = (batch["image_grid_thw"].prod(-1) // 4).tolist()
    asked = collate.ask(batch, ["a?", "b?", "c?"])
    assert set(asked) == {"input_ids", "attention_mask", "labels"}
    assert (asked["input_ids"] == image_id).sum(dim=1).tolist() == per_image
    again = collate.ask(batch, ["a?", "b?", "c?", "d?"], [2, 1, 2, 0])
    assert (again["input_ids"] == image_id).sum(dim=1).tolist() == [per_image[i] for i in (2, 1, 2, 0)]


def test_eval_sample_prepends_one_placeholder_or_takes_the_prompt_as_it_is():
    one = {"benchmark": "pope", "id": "1", "image_path": "/a.png", "prompt": "Q?", "answer": "yes"}
    several = {"benchmark": "mmmu", "id": "2", "image_path": ["/a.png", "/b.png"], "prompt": "<image> or <image>?"}
    assert eval_sample(one)["conversations"][0]["value"] == "<image>\nQ?"
    assert eval_sample(one)["image"] == "/a.png"
    assert eval_sample(several)["conversations"][0]["value"] == "<image> or <image>?"
    assert eval_sample(several)["image"] == ["/a.png", "/b.png"]
    assert eval_sample(several)["meta"] == {"benchmark": "mmmu", "id": "2", "image_path": ["/a.png", "/b.png"]}
    # Without images: no image and no placeholder left.
    assert eval_sample(one, with_image=False)["conversations"][0]["value"] == "Q?"
    without = eval_sample(several, with_image=False)
    assert without["image"] is None and without["conversations"][0]["value"] == " or ?"
    assert "image_path" not in without["meta"]  # its record does not claim images it was not shown


class Decider(NoneStrategy):
    """A deciding strategy (not registered) whose decision names the image's key."""

    decides = True

    def forward(self, visual, sink_mask, project, ask=None):
        routed = super().forward(visual, sink_mask, project)
        return Routed(
            routed.tokens, routed.sources, decisions=[{"route": k} for k in visual.keys], decision_seconds=3.0
        )


def test_a_question_with_several_images_records_one_decision_per_image(images):
    model, processor = build_tiny_llava(TinyLlavaSpec())
    module = SinkflowModule(model.eval(), processor, FAMILIES["llava"](), Decider()).eval()
    module.generation.max_new_tokens = 2
    samples = [one_image(images[0], "1"), two_image(images, "2"), text_only("3")]
    records, _ = module._answer(Collator(processor, VicunaV1(), generate=True)(samples))
    assert records[0]["routing"] == {"route": "1", "seconds": 1.0}
    assert records[1]["routing"] == [{"route": "2", "seconds": 1.0}, {"route": "2#1", "seconds": 1.0}]
    assert "routing" not in records[2]


def test_routing_shares_count_images():
    records = [
        {"routing": {"route": "both", "seconds": 1.0}},
        {"routing": [{"route": "sinks_only", "seconds": 2.0}, {"route": "both", "seconds": 6.0}]},
        {"prediction": "no routing"},
    ]
    assert routing_metrics(records) == {
        "routing/both": 2 / 3,
        "routing/sinks_only": 1 / 3,
        "routing/seconds_per_image": 3.0,
    }


def test_sink_statistics_count_each_image_of_a_question_once(images, tiny_family):
    """Two images of one question are two images; the same question seen twice (a DDP pad) counts them once."""
    model, processor, family, template = tiny(tiny_family, "llava")
    module = SinkflowModule(model, processor, family, NoneStrategy(), TopK(k=3)).eval()
    batch = Collator(processor, template, generate=True)([two_image(images, "2", meta={"benchmark": "mmmu"})])
    for _ in range(2):
        module._observe("test", module.pathway(batch, padding_side="left"))
    scalars, samples = module.stats["test"].compute()
    assert samples["counts"].tolist() == [3.0, 3.0] and scalars["sinks/per_image"] == 3.0


def test_an_instruct_record_may_show_several_images(tmp_path, images, llava_processor):
    """A list of file names, each resolved and checked; one placeholder per image, or the record is named."""
    turns = [{"from": "human", "value": "".join(TWO)}, {"from": "gpt", "value": "the first"}]
    good = {"id": "m", "image": [Path(p).name for p in images[:2]], "conversations": turns}
    path = tmp_path / "train.json"
    path.write_text(json.dumps([good]))
    (record,) = load_instruct(path, Path(images[0]).parent)
    assert record["image"] == images[:2]
    assert Collator(llava_processor, VicunaV1())([record])["pixel_values"].shape[0] == 2
    for image, message in [
        ([Path(images[0]).name], "image: expected one <image> per image: 1 in `image`, 2 in the conversation"),
        ([Path(images[0]).name, "missing.png"], f"image[1]: expected an image file at {Path(images[0]).parent}"),
        ([], "image: expected a file name or a non-empty list of file names, got []"),
        ([Path(images[0]).name, 7], "image[1]: expected a string file name, got 7"),
    ]:
        path.write_text(json.dumps([dict(good, image=image)]))
        with pytest.raises(
            DataFormatError, match=f"^{re.escape(f'{path}:record 0 (id ' + repr('m') + '): ' + message)}"
        ):
            load_instruct(path, Path(images[0]).parent)


def test_cot_route_decides_each_image_of_a_question(simulated_llava, routing_prompts, images):
    """The routing questions are asked about every image (each with its sample's question); the record of a
    two-image question gets the list of its two decisions, a one-image question its decision."""
    from sinkflow.sinks.strategies.cot_route import CotRoute

    module = simulated_llava(CotRoute(**routing_prompts)).eval()
    module.question_collator = Collator(module.processor, VicunaV1(), generate=True)
    module.generation.max_new_tokens = 2
    asked, ask = [], module.ask

    def recording_ask(batch, visual, questions, images, routed, max_new_tokens, answers):
        asked.append((questions, images))
        return ask(batch, visual, questions, images, routed, max_new_tokens, answers)

    module.ask = recording_ask
    batch = Collator(module.processor, VicunaV1(), generate=True)([two_image(images), one_image(images[2])])
    records, seen = module._answer(batch)
    question = routing_prompts["question_prompt"].replace("{question}", batch["image_questions"][0])
    ((questions, shown),) = asked
    assert questions[3:5] == [question, question] and len(questions) == 6 and shown == [0, 1, 2, 0, 1, 2]
    decisions = [dict(d, seconds=seen.routed.decision_seconds / 3) for d in seen.routed.decisions]
    assert records[0]["routing"] == decisions[:2] and records[1]["routing"] == decisions[2]
