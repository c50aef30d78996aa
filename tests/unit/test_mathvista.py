"""MathVista: both layouts, the two prompts, extraction and matching per parser, scores, shapes, the local judge."""

from __future__ import annotations

import io
import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from sinkflow.benchmarks.mathvista import (
    MathVista,
    edit_distance,
    extraction,
    load_mathvista,
    load_mathvista_hf,
)
from sinkflow.benchmarks.mathvista_judge import DEMO_PROMPT, LocalJudge, judge_prompt, judge_records
from sinkflow.data.errors import DataFormatError
from sinkflow.eval.metrics import score_records


def problem(pid: str, **changes) -> dict:
    """A release problem (testmini.json's fields); multi-choice unless changed."""
    base = {
        "question": "What fraction of the shape is blue?",
        "image": f"images/{pid}.jpg",
        "choices": ["3/11", "8/11", "6/11", "3/5"],
        "unit": None,
        "precision": None,
        "answer": "8/11",
        "question_type": "multi_choice",
        "answer_type": "text",
        "pid": pid,
        "metadata": {
            "split": "testmini",
            "category": "math-targeted-vqa",
            "task": "math word problem",
            "skills": ["arithmetic reasoning"],
        },
    }
    return {**base, **changes}


INTEGER = {"choices": None, "answer": "14", "question_type": "free_form", "answer_type": "integer"}
FLOAT = {"choices": None, "answer": "1.45", "question_type": "free_form", "answer_type": "float", "precision": 2}
LIST = {"choices": None, "answer": "[2007, 2008]", "question_type": "free_form", "answer_type": "list"}


def write_release(tmp_path, problems: dict) -> tuple:
    path = tmp_path / "testmini.json"
    path.write_text(json.dumps(problems), encoding="utf-8")
    return path, tmp_path


def record(prediction: str, **changes) -> dict:
    """A prediction record as the loader's item would make it."""
    fields = problem("1", **changes)
    item = {k: v for k, v in fields.items() if k not in ("metadata", "pid")}
    item.update(benchmark="mathvista", id="1", choices=fields["choices"] or [], task="math word problem")
    item.update(skills=["arithmetic reasoning"], query="q", prediction=prediction)
    return item


# ---- loaders and prompts ----------------------------------------------------------------------------------------


def test_release_layout_items_and_both_prompts(tmp_path):
    problems = {
        "1": problem("1"),
        "2": problem("2", question="How old is he?", unit="years", **INTEGER),
        "3": problem("3", question="How much?", unit="$", **FLOAT),
    }
    path, root = write_release(tmp_path, problems)
    items = load_mathvista(path, root)
    assert [i["id"] for i in items] == ["1", "2", "3"]
    assert items[0]["image_path"] == str(root.resolve() / "images" / "1.jpg")
    assert (
        items[0]["prompt"]
        == items[0]["query"]
        == (
            "Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.\n"
            "Question: What fraction of the shape is blue?\nChoices:\n(A) 3/11\n(B) 8/11\n(C) 6/11\n(D) 3/5"
        )
    )
    assert items[1]["prompt"] == (
        "Hint: Please answer the question requiring an integer answer and provide the final value, e.g., 1, 2, 3, "
        "at the end.\nQuestion: How old is he? (Unit: years)"
    )
    assert (items[1]["choices"], items[1]["precision"], items[2]["precision"]) == ([], None, 2)
    formatted = load_mathvista(path, root, prompt="format")
    assert [i["prompt"] for i in formatted] == [
        "What fraction of the shape is blue?\nA. 3/11\nB. 8/11\nC. 6/11\nD. 3/5\n"
        "Answer with the option's letter from the given choices directly.",
        "How old is he? (Unit: years)\nAnswer the question using a single integer number.",
        "How much? (Unit: $)\nAnswer the question using a single floating-point number with two decimal places.",
    ]
    assert formatted[0]["query"] == items[0]["query"]  # the judge reads the official query under either prompt
    with pytest.raises(ValueError, match="prompt` must be one of"):
        load_mathvista(path, root, prompt="cot")


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"answer": "9/11"}, "answer", "expected one of the choices"),
        ({"question_type": "open"}, "question_type", "expected one of"),
        ({**FLOAT, "precision": 3}, "precision", "expected 1 or 2"),
        ({"metadata": {"category": "x", "task": "trivia", "skills": []}}, "metadata.task", "expected one of"),
        ({"metadata": {"category": "x", "task": "math word problem", "skills": ["NUM"]}}, "metadata.skills", ""),
        ({"pid": "7"}, "pid", "expected '2' (its key)"),
        ({"answer": 3}, "answer", "expected str"),
    ],
)
def test_bad_problems_are_named_by_file_pid_and_field(tmp_path, changes, field, message):
    path, root = write_release(tmp_path, {"1": problem("1"), "2": {**problem("2"), **changes}})
    with pytest.raises(DataFormatError, match=re.escape(f"testmini.json:pid 2: {field}: {message}")):
        load_mathvista(path, root)


def test_missing_release_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="testmini.json of the MathVista release"):
        load_mathvista(tmp_path / "testmini.json", tmp_path)


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (4, 4), (255, 0, 0)).save(out, format="PNG")
    return out.getvalue()


def test_hugging_face_layout_reads_the_split_and_writes_images(tmp_path):
    rows = [
        {**problem("1"), "precision": None, "query": "the dataset's query", "decoded_image": {"bytes": _png()}},
        {**problem("2", **FLOAT), "precision": 2.0, "query": "q2", "decoded_image": {"bytes": _png()}},
    ]
    folder = tmp_path / "MathVista" / "data"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "testmini-00000-of-00001.parquet")
    test_rows = [{**rows[0], "pid": "9", "answer": "", "metadata": {**rows[0]["metadata"], "split": "test"}}]
    pq.write_table(pa.Table.from_pylist(test_rows), folder / "test-00000-of-00001.parquet")
    items = load_mathvista_hf(tmp_path / "MathVista")
    assert [(i["id"], i["prompt"], i["precision"]) for i in items] == [
        ("1", "the dataset's query", None),
        ("2", "q2", 2),
    ]
    assert (tmp_path / "MathVista_images" / "images" / "2.jpg").read_bytes() == _png()
    assert load_mathvista_hf(tmp_path / "MathVista", prompt="format")[1]["prompt"].endswith("two decimal places.")
    bad = [{**rows[0], "answer": "1/2"}]
    pq.write_table(pa.Table.from_pylist(bad), folder / "testmini-00000-of-00001.parquet")
    with pytest.raises(DataFormatError, match=r"testmini-00000-of-00001.parquet:1: answer: expected one of the"):
        load_mathvista_hf(tmp_path / "MathVista")


# ---- extraction and matching ------------------------------------------------------------------------------------

# (changes, prediction, extraction under official / lmms_eval / vlmevalkit, right under the three)
CASES = [
    ({}, "8/11", ("8/11", "8/11", "B"), (True, True, True)),
    ({}, "(B) 8/11", ("B", "B", "B"), (True, True, True)),
    ({}, "The correct answer is (B) 8/11.", ("B", "B", "B"), (True, True, True)),
    ({}, "I think it is 8/11 of the shape", ("8/11", "8/11", "8/11"), (True, True, True)),
    ({}, "Answer: C", ("C", "C", "C"), (False, False, False)),
    ({}, "b", (None, None, None), (False, False, False)),  # a lower-case bare letter is not an option letter
    ({}, "C is wrong, B is right", (None, None, None), (False, False, False)),
    # An empty response is the extraction "": the closest choice by edit distance is the shortest one.
    ({"choices": ["12", "5", "100"], "answer": "5"}, "", ("", "", None), (True, True, False)),
    (INTEGER, "14", ("14", "14", "14"), (True, True, True)),
    (INTEGER, "14.7", ("14.7", "14.7", "14.7"), (True, True, False)),  # int(float(x)) truncates
    (INTEGER, "The answer is 14 apples, not 15", ("14", "14", "14"), (True, True, True)),
    (INTEGER, "1,400", ("1400", "1400", "1400"), (False, False, False)),
    (INTEGER, "28/2", ("14", "14", "14"), (True, True, True)),
    (INTEGER, "no idea", (None, None, None), (False, False, False)),
    (FLOAT, "1.449", ("1.449", "1.449", "1.449"), (True, False, False)),  # rounded to 2 places; VLMEvalKit: ==
    (FLOAT, "Luca needs $1.45.", ("1.45", "1.45", "1.45"), (True, False, True)),
    (FLOAT, "\\frac{29}{20}", ("1.45", "1.45", "1.45"), (True, False, True)),
    (LIST, "between [2007,2008]", ("[2007, 2008]",) * 3, (True, True, False)),  # VLMEvalKit: a list is never right
    (LIST, "2007 and 2008", (None, None, None), (False, False, False)),
]


@pytest.mark.parametrize(("changes", "prediction", "extracted", "right"), CASES)
def test_extraction_and_matching_per_parser(changes, prediction, extracted, right):
    rec = record(prediction, **changes)
    parsers = ("official", "lmms_eval", "vlmevalkit")
    assert tuple(extraction(rec, p) for p in parsers) == extracted
    assert tuple(MathVista.correct(rec, p) for p in parsers) == right


def test_toolkit_rules_before_the_judge():
    # VLMEvalKit prefetches a number only when it is already right and not zero; otherwise sinkflow's rule reads it.
    assert extraction(record("0", **{**INTEGER, "answer": "0"}), "vlmevalkit") == "0"
    # A refusal is VLMEvalKit's 'Z', extracted but wrong; the official rule leaves it to the judge.
    refusal = record("Sorry, I can't help with images of people yet.")
    assert (extraction(refusal, "vlmevalkit"), extraction(refusal, "official")) == ("Z", None)
    # lmms-eval strips the response before its rules; the official script does not.
    padded = record(" 14 ", **INTEGER)
    assert extraction(padded, "lmms_eval") == extraction(padded, "official") == "14"


def test_edit_distance():
    assert [edit_distance(a, b) for a, b in [("", "abc"), ("kitten", "sitting"), ("8/11", "3/11"), ("ab", "ab")]] == [
        3,
        3,
        1,
        0,
    ]


# ---- scores ---------------------------------------------------------------------------------------------------


def test_scores_by_type_task_skill_and_unextracted():
    right_mc = record("B")
    wrong_int = record("15", **INTEGER) | {"id": "2", "task": "figure question answering"}
    silent = record("no idea", **INTEGER) | {"id": "3", "skills": ["numeric commonsense", "arithmetic reasoning"]}
    out = score_records([right_mc, wrong_int, silent], "official")
    assert out == {
        "mathvista/overall": 1 / 3,
        "mathvista/multi_choice/accuracy": 1.0,
        "mathvista/free_form/accuracy": 0.0,
        "mathvista/math word problem/accuracy": 0.5,
        "mathvista/figure question answering/accuracy": 0.0,
        "mathvista/arithmetic reasoning/accuracy": 1 / 3,
        "mathvista/numeric commonsense/accuracy": 0.0,
        "mathvista/unextracted": 1 / 3,
    }


def test_lmms_eval_scores_no_float_answer_right():
    """lmms-eval rounds with the Hugging Face precision, a float: round() raises, so no float answer is right."""
    records = [record("1.45", **FLOAT), record("14", **INTEGER) | {"id": "2"}]
    assert score_records(records, "official")["mathvista/overall"] == 1.0
    assert score_records(records, "lmms_eval")["mathvista/overall"] == 0.5


def test_predictions_file_checks_mathvista_fields(tmp_path):
    from sinkflow.data.predictions import read_numbered_predictions

    path = tmp_path / "predictions.jsonl"
    good, bad = record("B") | {"prompt": "p"}, record("B", answer="9/11") | {"id": "2", "prompt": "p"}
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"predictions.jsonl:2: answer: expected one of the choices"):
        read_numbered_predictions(path)


# ---- shapes -----------------------------------------------------------------------------------------------------


def test_shapes_writes_the_release_layout(shapes_root):
    from sinkflow.shapes import annotate_scope

    items = load_mathvista(shapes_root / "mathvista" / "testmini.json", shapes_root / "eval_images", check_images=True)
    scenes = json.loads((shapes_root / "scenes.json").read_text())
    kinds = {(i["question_type"], i["answer_type"]) for i in items}
    assert kinds == {("free_form", "integer"), ("free_form", "float"), ("multi_choice", "text")}
    assert any(i["unit"] == "shapes" for i in items) and {i["precision"] for i in items} >= {1, 2}
    for item in items:
        scene = scenes[f"eval_images/{item['image']}"]
        if item["question"] == "How many shapes are there?":
            assert item["answer"] == str(len(scene["objects"]))
        if item["question"] == "What is the background color?":
            assert item["answer"] == scene["background"]
        assert annotate_scope(item) == {"scope": "global"}
    # Answering with the truth is right under the official rules.
    scores = score_records([dict(i, prediction=i["answer"]) for i in items], "official")
    assert scores["mathvista/overall"] == 1.0 and scores["mathvista/unextracted"] == 0.0


# ---- the judge --------------------------------------------------------------------------------------------------


def test_judge_is_asked_only_for_unextracted_answers():
    asked = []

    def judge(prompt: str) -> str:
        asked.append(prompt)
        return "14"

    records = [record("14", **INTEGER), record("no idea", **INTEGER) | {"id": "2"}, {"benchmark": "pope", "id": "x"}]
    judged = judge_records(records, "official", judge)
    assert asked == [judge_prompt("q", "no idea")]
    assert asked[0].startswith(DEMO_PROMPT) and asked[0].endswith("q\n\nno idea\n\nExtracted answer: ")
    assert [r.get("extraction") for r in judged] == [None, "14", None]
    assert score_records(judged[:2], "official") == score_records(records[:1] + [judged[1]], "official")
    assert score_records(judged[:2], "official")["mathvista/unextracted"] == 0.0


@pytest.fixture(scope="module")
def tiny_judge(tmp_path_factory) -> str:
    """A random tiny Llama causal LM with the tiny models' tokenizer, saved in HF format."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from sinkflow.models.tiny import build_tokenizer

    path = tmp_path_factory.mktemp("judge")
    tokenizer = build_tokenizer(300)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_local_judge_on_a_tiny_model(tiny_judge, tmp_path):
    from sinkflow.eval.score import main

    judge = LocalJudge(tiny_judge, max_new_tokens=4)
    calls = []

    def counted(prompt: str) -> str:
        calls.append(prompt)
        return judge(prompt)

    records = [record("B"), record("C is wrong, B is right") | {"id": "2"}]
    judged = judge_records(records, "official", counted)
    assert len(calls) == 1 and isinstance(judged[1]["extraction"], str) and "extraction" not in judged[0]
    path = tmp_path / "predictions.jsonl"
    path.write_text("".join(json.dumps(r | {"prompt": "p"}) + "\n" for r in records), encoding="utf-8")
    assert main([str(path), "--judge", tiny_judge])["mathvista/overall"] >= 0.5
    with pytest.raises(FileNotFoundError, match="MathVista judge not found"):
        LocalJudge(tmp_path / "none")
