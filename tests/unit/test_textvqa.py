"""TextVQA: both data layouts, the EvalAI normalisation per toolkit, VQA accuracy to the last bit, and the shapes
files read through the same loader."""

import io
import json
import random

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
from PIL import Image

from sinkflow.benchmarks.textvqa import (
    TextVQA,
    evalai_answer,
    load_textvqa,
    load_textvqa_hf,
    question_score,
    vlmevalkit_answer,
)
from sinkflow.data.errors import DataFormatError
from sinkflow.data.predictions import read_predictions
from sinkflow.eval.metrics import score_records
from sinkflow.shapes import generate_shapes

SUFFIX = "\nAnswer the question using a single word or phrase."
CAMERA = ["nous les gosses", "dakota", "clos culombu", "dakota digital", "dakota", "dakota"]
CAMERA += ["dakota", "Dakota", "the Dakota", "dakota digital"]
ENTRIES = [
    {
        "question": "what is the brand of this camera?",
        "image_id": "003a8ae2ef43b901",
        "question_id": 34602,
        "answers": CAMERA,
        "ocr_tokens": ["dakota", "digital", "single-use"],
        "set_name": "val",
    },
    {
        "question": "what does UBS say?",
        "image_id": "b9dc400eb20bad64",
        "question_id": 34603,
        "answers": ["2", "two", "Two.", "2", "3", "3", "3", "2.", "the 2", "two"],
        "ocr_tokens": [],
        "set_name": "val",
    },
]


def release(tmp_path, entries=ENTRIES, text=None):
    path = tmp_path / "TextVQA_0.5.1_val.json"
    path.write_text(text if text is not None else json.dumps({"dataset_type": "val", "data": entries}))
    return path


def record(answers, prediction, question_id=1):
    return {
        "benchmark": "textvqa",
        "id": str(question_id),
        "question_id": question_id,
        "question": "q",
        "answer": answers[0],
        "answers": answers,
        "prediction": prediction,
        "prompt": "p",
    }


def test_the_release_loads_with_lmms_evals_prompt_and_the_consensus_answer(tmp_path):
    items = load_textvqa(release(tmp_path), tmp_path / "train_images")
    assert items[0] == {
        "benchmark": "textvqa",
        "id": "34602",
        "question_id": 34602,
        "question": "what is the brand of this camera?",
        "answer": "dakota",  # 7 of 10 after normalisation ("Dakota", "the Dakota" too)
        "answers": CAMERA,
        "image": "003a8ae2ef43b901.jpg",
        "image_path": str((tmp_path / "train_images" / "003a8ae2ef43b901.jpg").resolve()),
        "prompt": "What is the brand of this camera?" + SUFFIX,
    }
    # str.capitalize lower-cases the rest, as lmms-eval's prompt does; the question itself is kept.
    assert items[1]["prompt"] == "What does ubs say?" + SUFFIX and items[1]["question"] == "what does UBS say?"
    assert items[1]["answer"] == "2"  # "2", "two", "Two.", "2.", "the 2" all normalise to 2


def test_the_ocr_option_adds_the_reference_line_even_without_tokens(tmp_path):
    first, second = load_textvqa(release(tmp_path), tmp_path, ocr=True)
    ocr = "\nReference OCR token: "
    assert first["prompt"] == f"What is the brand of this camera?{ocr}dakota, digital, single-use{SUFFIX}"
    assert second["prompt"] == f"What does ubs say?{ocr}{SUFFIX}"
    with pytest.raises(ValueError, match=r"`dataset.eval_sets.textvqa.ocr` must be one of \(False, True\), got 'yes'"):
        load_textvqa(release(tmp_path), tmp_path, ocr="yes")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"answers": CAMERA[:9]}, "answers: expected a list of 10 strings"),
        ({"answers": CAMERA[:9] + [3]}, "answers: expected a list of 10 strings"),
        ({"question_id": "34603"}, "question_id: expected int, got '34603'"),
        ({"question_id": 34602}, r"question_id: duplicate id 34602 \(first at data\[0\]\)"),
        ({"image_id": ""}, "image_id: expected an image id, got an empty string"),
        ({"question": None}, "question: expected str, got None"),
    ],
)
def test_a_bad_entry_is_named_by_file_entry_and_field(tmp_path, change, message):
    path = release(tmp_path, [ENTRIES[0], {**ENTRIES[1], **change}])
    with pytest.raises(DataFormatError, match=rf"TextVQA_0\.5\.1_val\.json:data\[1\]: {message}"):
        load_textvqa(path, tmp_path)


def test_bad_release_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="the release's TextVQA_0.5.1_val.json"):
        load_textvqa(tmp_path / "missing.json", tmp_path)
    with pytest.raises(DataFormatError, match=r"TextVQA_0.5.1_val.json:2: <json>: expected a JSON document"):
        load_textvqa(release(tmp_path, text='{"data": [\n}'), tmp_path)
    with pytest.raises(DataFormatError, match="data: expected an object whose 'data' is the list of questions"):
        load_textvqa(release(tmp_path, text="[]"), tmp_path)
    with pytest.raises(DataFormatError, match="<file>: no questions"):
        load_textvqa(release(tmp_path, []), tmp_path)
    with pytest.raises(DataFormatError, match=r"data\[0\]: <entry>: expected a JSON object, got list"):
        load_textvqa(release(tmp_path, [[]]), tmp_path)
    entry = {k: v for k, v in ENTRIES[0].items() if k != "ocr_tokens"}
    with pytest.raises(DataFormatError, match=r"data\[0\]: ocr_tokens: missing"):
        load_textvqa(release(tmp_path, [entry]), tmp_path, ocr=True)
    assert len(load_textvqa(release(tmp_path, [entry]), tmp_path)) == 1  # read only when asked for
    with pytest.raises(DataFormatError, match=r"data\[0\]: image: expected an image file at .*003a8ae2ef43b901.jpg"):
        load_textvqa(release(tmp_path), tmp_path, check_images=True)


def jpeg(shade) -> dict:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (shade, 0, 0)).save(buffer, format="JPEG")
    return {"bytes": buffer.getvalue(), "path": None}


def hf_rows(entries) -> list[dict]:
    return [dict(e, image=jpeg(10 * n), image_width=8, image_height=8) for n, e in enumerate(entries)]


def test_the_hf_snapshot_reads_only_its_validation_files_into_the_release_items(tmp_path):
    data = tmp_path / "textvqa" / "data"
    data.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(hf_rows(ENTRIES)), data / "validation-00000-of-00001.parquet")
    train = [{**ENTRIES[0], "question_id": 1, "set_name": "train"}]
    pq.write_table(pa.Table.from_pylist(hf_rows(train)), data / "train-00000-of-00001.parquet")
    items = load_textvqa_hf(tmp_path / "textvqa", ocr=True)
    original = load_textvqa(release(tmp_path), tmp_path, ocr=True)
    assert [{k: v for k, v in i.items() if k != "image_path"} for i in items] == [
        {k: v for k, v in i.items() if k != "image_path"} for i in original
    ]
    assert [i["image_path"] for i in items] == [
        str((tmp_path / "textvqa_images" / f"{e['image_id']}.jpg").resolve()) for e in ENTRIES
    ]
    assert all(Image.open(i["image_path"]).size == (8, 8) for i in items)


def test_a_save_to_disk_folder_of_the_split_is_read_whole_and_a_snapshot_without_it_is_an_error(tmp_path):
    saved = tmp_path / "saved"
    saved.mkdir()
    table = pa.Table.from_pylist(hf_rows(ENTRIES))
    with ipc.new_stream(saved / "data-00000-of-00001.arrow", table.schema) as writer:
        writer.write_table(table)
    assert [i["id"] for i in load_textvqa_hf(saved)] == ["34602", "34603"]
    train_only = tmp_path / "snapshot" / "data"
    train_only.mkdir(parents=True)
    pq.write_table(table, train_only / "train-00000-of-00001.parquet")
    with pytest.raises(
        DataFormatError, match="snapshot: <files>: expected validation-.*parquet files or a validation/"
    ):
        load_textvqa_hf(tmp_path / "snapshot")


def test_a_bad_hf_row_is_named_by_file_row_and_field(tmp_path):
    path = tmp_path / "validation.parquet"
    pq.write_table(pa.Table.from_pylist(hf_rows([ENTRIES[0], {**ENTRIES[1], "answers": ["2"] * 11}])), path)
    with pytest.raises(DataFormatError, match=r"validation.parquet:2: answers: expected a list of 10 strings"):
        load_textvqa_hf(path)
    pq.write_table(
        pa.Table.from_pylist([{k: v for k, v in r.items() if k != "answers"} for r in hf_rows(ENTRIES)]), path
    )
    with pytest.raises(DataFormatError, match=r"validation.parquet: answers: missing column"):
        load_textvqa_hf(path)


@pytest.mark.parametrize(
    "text, evalai, vlmevalkit",
    [
        ("Two.", "2", "2"),
        ("\tTen\n", "10", "10"),
        ("none", "0", "0"),
        ("The Coca-Cola", "coca cola", "coca cola"),  # article dropped, "-" without a space beside it -> space
        ("1,000", "1000", "1000"),
        ("dont", "don't", "don't"),
        ("somebody'd", "somebodyd", "somebodyd"),  # the table's one reversed entry
        ("e.g. 3.5", "eg 3.5", "eg 3.5"),
        ("What?", "what", "what"),
        ("." * 40, "." * 8, "." * 8),  # the period pass stops after 32 (re.UNICODE passed as the count)
        # where the toolkits part
        ("2.", "2", "2."),  # VLMEvalKit keeps a period after a digit
        ("red,blue", "redblue", "red blue"),  # EvalAI deletes commas first; VLMEvalKit spaces them
        ("1,000-2,000", "1000 2000", "10002000"),  # a comma between digits makes VLMEvalKit delete all marks
        ("Joe's", "joe 's", "joe's"),  # EvalAI splits 's off
    ],
)
def test_answer_normalisation_per_toolkit(text, evalai, vlmevalkit):
    assert (evalai_answer(text), vlmevalkit_answer(text)) == (evalai, vlmevalkit)


COUNTS = ["2", "two", "Two.", "2", "3", "3", "3", "2.", "the 2", "two"]


@pytest.mark.parametrize(
    "prediction, official, vlmevalkit",
    [
        ("2", 1.0, 1.0),  # 7 of 10 agree (6 under VLMEvalKit): full credit
        ("Three", 0.9, 0.9),  # 3 agree: (3 x 2/3 + 7 x 1) / 10
        ("2.", 1.0, 0.3),  # VLMEvalKit: only the one "2." agrees: 9 x 1/3 / 10
        ("5", 0.0, 0.0),
    ],
)
def test_vqa_accuracy_leaves_each_answer_out(prediction, official, vlmevalkit):
    r = record(COUNTS, prediction)
    assert question_score(r, "official") == question_score(r, "lmms_eval") == official
    assert question_score(r, "vlmevalkit") == vlmevalkit
    assert TextVQA.correct(r, "official") is (official == 1.0)


@pytest.mark.parametrize(
    "positions, official, lmms_eval, vlmevalkit",
    [
        ((0, 1), 0.6, 0.6, 0.6),
        ((8, 9), 0.5999999999999999, 0.6, 0.5999999999999999),
        ((7, 8, 9), 0.9, 0.9, 0.8999999999999998),
        ((0, 5, 9), 0.8999999999999998, 0.9, 0.8999999999999998),
    ],
)
def test_each_toolkits_mean_of_the_ten_to_the_last_bit(positions, official, lmms_eval, vlmevalkit):
    """m4c sums in answer order, lmms-eval's statistics.mean is exact, VLMEvalKit's np.mean sums pairwise: where the
    matching answers sit decides the last bit."""
    r = record(["red" if i in positions else "blue" for i in range(10)], "Red")
    assert [question_score(r, p) for p in ("official", "lmms_eval", "vlmevalkit")] == [official, lmms_eval, vlmevalkit]


def test_the_overall_score_is_the_mean_in_question_order_whatever_the_record_order():
    records = [record(COUNTS, p, question_id=n) for n, p in enumerate(["2", "Three", "2.", "5"])]
    shuffled = random.Random(0).sample(records, len(records))
    for parser, expected in (("official", 0.725), ("lmms_eval", 0.725), ("vlmevalkit", 0.5499999999999999)):
        # (1 + 0.9 + 1 + 0) / 4; VLMEvalKit: (1 + 0.9 + 0.3 + 0) / 4
        assert score_records(records, parser) == score_records(shuffled, parser) == {"textvqa/overall": expected}


def test_a_predictions_file_needs_the_ten_answers_and_the_question_id(tmp_path):
    path = tmp_path / "predictions.jsonl"
    path.write_text(json.dumps(record(COUNTS[:9], "2")) + "\n")
    with pytest.raises(DataFormatError, match=r"predictions.jsonl:1: answers: expected a list of 10 strings"):
        read_predictions(path)
    path.write_text(json.dumps({**record(COUNTS, "2"), "question_id": "1"}) + "\n")
    with pytest.raises(DataFormatError, match=r"predictions.jsonl:1: question_id: expected an integer for textvqa"):
        read_predictions(path)
    path.write_text(json.dumps(record(COUNTS, "two")) + "\n")
    assert score_records(read_predictions(path)) == {"textvqa/overall": 1.0}


def test_the_shapes_files_load_and_answer_from_the_scene(tmp_path):
    root = generate_shapes(tmp_path, seed=3, n_train=4, n_eval=12)
    scenes = json.loads((root / "scenes.json").read_text())
    items = load_textvqa(
        root / "textvqa" / "TextVQA_0.5.1_val.json", root / "eval_images", check_images=True, image_extension=".png"
    )
    assert len(items) == json.loads((root / "manifest.json").read_text())["counts"]["textvqa"]
    kinds, disagreeing = set(), set()
    for item in items:
        scene = scenes[f"eval_images/{item['image']}"]
        question = item["question"]
        if question == "what color is the background?":
            truth = scene["background"]
        elif question == "how many shapes are there?":
            truth = str(len(scene["objects"]))
        else:
            (truth,) = [o["color"] for o in scene["objects"] if question == f"what color is the {o['shape']}?"]
        kinds.add(question.split()[-1])
        normalised = [evalai_answer(a) for a in item["answers"]]
        wrong = [a for a in normalised if a != truth]
        assert len(normalised) == 10 and len(set(wrong)) <= 1 and len(wrong) <= 3, item
        disagreeing.add(len(wrong))
        assert question_score(dict(item, prediction=truth.capitalize() + "."), "official") == 1.0
        if wrong:
            partial = question_score(dict(item, prediction=wrong[0]), "official")
            assert partial == pytest.approx({1: 0.3, 2: 0.6, 3: 0.9}[len(wrong)])
    assert (
        {"background?", "there?"}
        < kinds
        <= {"background?", "there?", "circle?", "square?", "triangle?", "diamond?", "star?"}
    )
    assert disagreeing == {0, 1, 2, 3}
    spelled = {a for item in items for a in item["answers"] if item["question"] == "how many shapes are there?"}
    assert {"2", "two", "Two."} <= spelled  # counts as digits and words, with case and periods to normalise
