"""Templates, placeholder expansion and label masking: only assistant answers (+ </s>) are supervised."""

import re

import pytest
import torch
from PIL import Image

from sinkflow.data.collate import Collator
from sinkflow.data.templates import VICUNA_V1_SYSTEM, ProcessorChatTemplate, VicunaV1
from sinkflow.models.tiny import TinyLlavaSpec, build_tiny_llava
from sinkflow.pathway import IGNORE_INDEX

N_IMAGE_TOKENS = 16


@pytest.fixture(scope="module")
def processor():
    return build_tiny_llava(TinyLlavaSpec())[1]


def conversation(image):
    return {
        "id": "s1",
        "image": image,
        "conversations": [
            {"from": "human", "value": "<image>\nWhat is the background color?"},
            {"from": "gpt", "value": "white"},
            {"from": "human", "value": "How many shapes are there?"},
            {"from": "gpt", "value": "3"},
        ],
    }


def test_vicuna_v1_rendering_matches_llava():
    class Tok:
        eos_token = "</s>"

    class Proc:
        tokenizer = Tok()

    rendered = VicunaV1().render(
        Proc(),
        [("user", "<image>\nQ1"), ("assistant", "A1"), ("user", "Q2"), ("assistant", "A2")],
        add_generation_prompt=False,
    )
    assert rendered.text == f"{VICUNA_V1_SYSTEM} USER: <image>\nQ1 ASSISTANT: A1</s>USER: Q2 ASSISTANT: A2</s>"
    assert [rendered.text[s:e] for s, e in rendered.supervised] == ["A1</s>", "A2</s>"]
    prompt = VicunaV1().render(Proc(), [("user", "Q")], add_generation_prompt=True)
    assert prompt.text.endswith("USER: Q ASSISTANT:") and prompt.supervised == []


def test_label_masking_exact_positions(processor, image_path):
    """Hand-built expectation: the supervised positions are exactly the answer tokens and their </s>."""
    tok = processor.tokenizer
    batch = Collator(processor, VicunaV1())([conversation(image_path)])
    ids, labels = batch["input_ids"][0], batch["labels"][0]

    image = "<image>" * N_IMAGE_TOKENS
    head = f"{VICUNA_V1_SYSTEM} USER: {image}\nWhat is the background color? ASSISTANT:"
    middle = "USER: How many shapes are there? ASSISTANT:"
    first = len(tok(head)["input_ids"])  # includes <s>
    answer1 = tok(" white</s>", add_special_tokens=False)["input_ids"]
    second = first + len(answer1) + len(tok(middle, add_special_tokens=False)["input_ids"])
    answer2 = tok(" 3</s>", add_special_tokens=False)["input_ids"]
    expected = list(range(first, first + len(answer1))) + list(range(second, second + len(answer2)))

    supervised = torch.nonzero(labels != IGNORE_INDEX).flatten().tolist()
    assert supervised == expected
    assert labels[supervised].tolist() == answer1 + answer2
    assert tok.decode(labels[supervised]) == " white</s> 3</s>"
    assert len(ids) == second + len(answer2)
    assert (ids == processor.image_token_id).sum() == N_IMAGE_TOKENS
    assert labels[0] == IGNORE_INDEX  # <s>


def test_padding_and_image_positions_are_ignored(processor, image_path):
    short = {
        "id": "s2",
        "image": image_path,
        "conversations": [{"from": "human", "value": "<image>\nHow many?"}, {"from": "gpt", "value": "2"}],
    }
    batch = Collator(processor, VicunaV1())([conversation(image_path), short])
    pad = batch["attention_mask"] == 0
    assert pad[1].any() and not pad[0].any()
    assert batch["attention_mask"][1, 0] == 1, "training batches pad on the right"
    assert (batch["labels"][pad] == IGNORE_INDEX).all()
    assert (batch["labels"][batch["input_ids"] == processor.image_token_id] == IGNORE_INDEX).all()
    assert batch["pixel_values"].shape == (2, 3, 64, 64)
    assert [m["id"] for m in batch["meta"]] == ["s1", "s2"]


def test_processor_chat_template_gives_the_same_batch(processor, image_path):
    vicuna = Collator(processor, VicunaV1())([conversation(image_path)])
    chat = Collator(processor, ProcessorChatTemplate())([conversation(image_path)])
    assert torch.equal(vicuna["input_ids"], chat["input_ids"])
    assert torch.equal(vicuna["labels"], chat["labels"])


def test_generation_batch_is_left_padded_prompt_only(processor, image_path):
    short = {"id": "s2", "image": image_path, "conversations": [{"from": "human", "value": "<image>\nHow many?"}]}
    batch = Collator(processor, VicunaV1(), generate=True)([conversation(image_path), short])
    assert (batch["labels"] == IGNORE_INDEX).all()
    assert batch["attention_mask"][1, 0] == 0 and batch["attention_mask"][:, -1].all()
    # The trailing assistant answer is dropped; the prompt ends where the model must continue.
    assert batch["meta"][0]["prompt"].endswith("USER: How many shapes are there? ASSISTANT:")
    assert "white</s>" in batch["meta"][0]["prompt"]
    assert batch["meta"][1]["prompt"].endswith("USER: <image>\nHow many? ASSISTANT:")


def test_placeholder_count_must_match_images(processor, image_path):
    sample = conversation(None)
    with pytest.raises(ValueError, match=r"sample 's1': 1 <image> tokens .* for no image"):
        Collator(processor, VicunaV1())([sample])


def test_truncation_counts_rows_and_protects_image_tokens(processor, image_path):
    collate = Collator(processor, VicunaV1(), max_length=N_IMAGE_TOKENS + 40)
    batch = collate([conversation(image_path)])
    assert batch["input_ids"].shape[1] == N_IMAGE_TOKENS + 40 and batch["n_truncated"] == 1
    assert Collator(processor, VicunaV1())([conversation(image_path)])["n_truncated"] == 0
    with pytest.raises(ValueError, match=r"^dataset\.max_length=20 would cut image placeholder tokens"):
        Collator(processor, VicunaV1(), max_length=20)([conversation(image_path)])


def test_generation_prompts_are_never_truncated(processor, image_path):
    with pytest.raises(ValueError, match=r"^a prompt exceeds dataset\.max_length=20; raise it for evaluation$"):
        Collator(processor, VicunaV1(), generate=True, max_length=20)([conversation(image_path)])


def test_chat_template_path_needs_a_template(processor):
    class NoTemplate:
        chat_template = None

    with pytest.raises(ValueError, match="NoTemplate has no chat_template; use template=vicuna_v1"):
        ProcessorChatTemplate().render(NoTemplate(), [("user", "hi")], add_generation_prompt=True)


def test_an_unreadable_image_names_the_file_and_the_question(processor, tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_text("not an image")
    sample = dict(conversation(str(corrupt)), id="random/3")
    with pytest.raises(
        OSError, match=re.escape(f"cannot read image {corrupt} (question 'random/3'): cannot identify image file")
    ) as caught:
        Collator(processor, VicunaV1())([sample])
    assert isinstance(caught.value.__cause__, OSError)


@pytest.fixture(scope="module")
def qwen_processor():
    from sinkflow.models.tiny_qwen import TinyQwenSpec, build_tiny_qwen

    return build_tiny_qwen(TinyQwenSpec())[1]


def test_an_image_the_processor_rejects_names_the_file_and_the_question(qwen_processor, image_path, tmp_path):
    # Qwen2-VL's processor refuses an aspect ratio above 200 (here 300), from inside transformers.
    thin = tmp_path / "thin.png"
    Image.new("RGB", (1, 300)).save(thin)
    samples = [dict(conversation(image_path), id="shapes/1"), dict(conversation(str(thin)), id="random/3")]
    rejected = "absolute aspect ratio must be smaller than 200, got 300.0"
    message = f"cannot process image {thin} (question 'random/3'): {rejected}"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$") as caught:
        Collator(qwen_processor, ProcessorChatTemplate())(samples)
    assert isinstance(caught.value.__cause__, ValueError) and str(caught.value.__cause__) == rejected


def count_calls(monkeypatch, processor, fail_batches: bool = False) -> list[int]:
    """The number of images of each image-processor call (a batch of several fails with `fail_batches`)."""
    calls = []
    image_processor = type(processor.image_processor)
    original = image_processor.__call__

    def call(self, images, **kwargs):
        calls.append(len(images))
        if fail_batches and len(images) > 1:
            raise RuntimeError("no batches today")
        return original(self, images, **kwargs)

    monkeypatch.setattr(image_processor, "__call__", call)
    return calls


def test_a_batch_the_processor_takes_is_processed_in_one_call(processor, image_path, monkeypatch):
    calls = count_calls(monkeypatch, processor)
    batch = Collator(processor, VicunaV1())([conversation(image_path), conversation(image_path)])
    assert calls == [2] and batch["pixel_values"].shape[0] == 2


def test_a_batch_failure_no_single_image_explains_is_raised_as_it_was(processor, image_path, monkeypatch):
    calls = count_calls(monkeypatch, processor, fail_batches=True)
    with pytest.raises(RuntimeError, match="^no batches today$"):
        Collator(processor, VicunaV1())([conversation(image_path), conversation(image_path)])
    assert calls == [2, 1, 1]


def test_image_keys_are_unique_across_evaluation_sets(processor, image_path):
    """An MMStar index and an open-set question id can be equal: the key says which set (sink statistics count an
    image once by it, routing decisions find their record by it)."""
    samples = [
        {
            "id": "3",
            "image": image_path,
            "conversations": [{"from": "human", "value": "<image>\nQ?"}],
            "meta": {"benchmark": benchmark},
        }
        for benchmark in ("mmstar", "open")
    ]
    samples.append({"id": "t0", "image": image_path, "conversations": [{"from": "human", "value": "<image>\nQ?"}]})
    assert Collator(processor, VicunaV1(), generate=True)(samples)["image_keys"] == ["mmstar/3", "open/3", "t0"]


def test_an_image_in_memory_collates_as_its_file(processor, image_path):
    """lmms-eval hands its tasks' images over decoded: one, or a list, stands for the file(s)."""
    collator = Collator(processor, VicunaV1(), generate=True)
    from_file = collator([conversation(image_path)])
    with Image.open(image_path) as image:
        in_memory = image.convert("RGBA")  # converted to RGB as a file is
    for given in (in_memory, [in_memory]):
        batch = collator([conversation(given)])
        assert torch.equal(batch["pixel_values"], from_file["pixel_values"])
        assert torch.equal(batch["input_ids"], from_file["input_ids"]) and batch["meta"] == from_file["meta"]
