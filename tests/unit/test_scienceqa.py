"""ScienceQA-IMG: both layouts load the same test image questions, bad problems are named by file, line and field,
the three toolkits' answer rules on worked examples, the paper's breakdown, and the shapes files."""

import io
import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
from PIL import Image

from sinkflow.benchmarks.multiple_choice import choice_vlmevalkit
from sinkflow.benchmarks.scienceqa import (
    ScienceQAImg,
    lmms_eval_correct,
    load_scienceqa,
    load_scienceqa_hf,
    official_letter,
)
from sinkflow.data.errors import DataFormatError
from sinkflow.data.predictions import read_predictions
from sinkflow.eval.metrics import score_records
from sinkflow.shapes import annotate_scope, generate_shapes
from sinkflow.shapes.questions import question_scope

SUFFIX = "\nAnswer with the option's letter from the given choices directly."


def problem(
    question, choices, answer, hint="", image="image.png", split="test", subject="natural science", grade="grade4"
):
    return {
        "question": question,
        "choices": choices,
        "answer": answer,
        "hint": hint,
        "image": image,
        "task": "closed choice",
        "grade": grade,
        "subject": subject,
        "topic": "biology",
        "category": "Classification",
        "skill": "Identify animals",
        "lecture": "",
        "solution": "",
        "split": split,
    }


# The release: two test image questions (one with a hint), a text-only test question and a training question.
PROBLEMS = {
    "4": problem("Which animal has fur?", ["fish", "cat"], 1, hint="Figure: a farm."),
    "7": problem("What is the capital of Peru?", ["Lima", "Quito"], 0, image=None, subject="social science"),
    "9": problem("Which is a bird?", ["cat", "dog", "bird", "fish"], 2, split="train"),
    "12": problem(
        "Which word is a noun?",
        ["run", "blue", "table", "quickly", "soft"],
        2,
        subject="language science",
        grade="grade9",
    ),
}
SPLITS = {"train": ["9"], "val": [], "test": ["12", "7", "4"]}


def write_release(folder, problems=PROBLEMS, splits=SPLITS):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "problems.json").write_text(json.dumps(problems, indent=4))
    (folder / "pid_splits.json").write_text(json.dumps(splits))
    return folder


def line_of(folder, pid: str) -> int:
    """The line `"<pid>": {` of the written problems.json."""
    return (folder / "problems.json").read_text().splitlines().index(f'    "{pid}": {{') + 1


def test_the_release_loads_the_test_image_questions_in_split_order_with_lmms_eval_prompts(tmp_path):
    items = load_scienceqa(write_release(tmp_path / "sqa"))
    assert [item["id"] for item in items] == ["12", "4"]
    noun, fur = items
    assert noun["prompt"] == (
        "Which word is a noun?\nA. run\nB. blue\nC. table\nD. quickly\nE. soft" + SUFFIX
    )  # no hint: no Context line
    assert fur["prompt"] == "Context: Figure: a farm.\nWhich animal has fur?\nA. fish\nB. cat" + SUFFIX
    assert fur == {
        "benchmark": "scienceqa_img",
        "id": "4",
        "question": "Which animal has fur?",
        "hint": "Figure: a farm.",
        "choices": ["fish", "cat"],
        "answer": "B",
        "subject": "natural science",
        "grade": "grade4",
        "topic": "biology",
        "category": "Classification",
        "skill": "Identify animals",
        "image": "test/4/image.png",
        "image_path": str((tmp_path / "sqa" / "images" / "test" / "4" / "image.png").resolve()),
        "prompt": fur["prompt"],
    }
    assert noun["answer"] == "C" and noun["grade"] == "grade9"


@pytest.mark.parametrize(
    ("pid", "change", "field", "message"),
    [
        ("4", {"answer": 2}, "answer", "expected a choice index 0..1, got 2"),
        ("4", {"answer": True}, "answer", "expected int, got True"),
        ("4", {"choices": ["a"]}, "choices", "expected 2 to 5 strings"),
        ("12", {"choices": list("abcdef")}, "choices", "expected 2 to 5 strings"),
        ("4", {"grade": "grade13"}, "grade", "expected grade1 .. grade12, got 'grade13'"),
        ("4", {"subject": "science"}, "subject", "expected one of"),
        ("4", {"split": "val"}, "split", "expected 'test' (listed there in pid_splits.json), got 'val'"),
        ("4", {"hint": None}, "hint", "expected str, got None"),
    ],
)
def test_a_bad_problem_is_named_by_file_line_and_field(tmp_path, pid, change, field, message):
    folder = write_release(tmp_path / "sqa", {**PROBLEMS, pid: {**PROBLEMS[pid], **change}})
    with pytest.raises(DataFormatError, match=f"problems.json:{line_of(folder, pid)}: {field}: ") as err:
        load_scienceqa(folder)
    assert message in str(err.value)


def test_a_missing_image_key_a_missing_problem_a_missing_image_and_broken_json_are_named(tmp_path):
    no_key = {k: v for k, v in PROBLEMS["4"].items() if k != "image"}
    folder = write_release(tmp_path / "a", {**PROBLEMS, "4": no_key})
    with pytest.raises(DataFormatError, match=f"problems.json:{line_of(folder, '4')}: image: missing"):
        load_scienceqa(folder)
    folder = write_release(tmp_path / "b", splits={**SPLITS, "test": ["4", "99"]})
    with pytest.raises(DataFormatError, match="pid_splits.json: test: problem id '99' is not in problems.json"):
        load_scienceqa(folder)
    with pytest.raises(DataFormatError, match=r"problems.json:\d+: image: expected an image file at .*test/12/image"):
        load_scienceqa(write_release(tmp_path / "c"), check_images=True)
    folder = write_release(tmp_path / "d")
    (folder / "problems.json").write_text('{\n  "4": {"question": "q",\n  "choices": [}\n}')
    with pytest.raises(DataFormatError, match="problems.json:3: <json>: expected a JSON object"):
        load_scienceqa(folder)
    folder = write_release(tmp_path / "f", {"4": 5}, {"test": ["4"]})
    with pytest.raises(DataFormatError, match="problems.json:2: <problem>: expected an object for problem '4', got 5"):
        load_scienceqa(folder)
    folder = write_release(tmp_path / "g", splits={"test": "4"})
    with pytest.raises(DataFormatError, match="pid_splits.json: test: expected a list of problem ids"):
        load_scienceqa(folder)
    folder = write_release(tmp_path / "e", {"7": PROBLEMS["7"]}, {"test": ["7"]})
    with pytest.raises(DataFormatError, match="image: no test problem has an image"):
        load_scienceqa(folder)
    with pytest.raises(FileNotFoundError, match="pid_splits.json"):
        load_scienceqa(tmp_path / "nowhere")


def png(color) -> dict:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


HF_SCHEMA = pa.schema(
    [("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])), ("question", pa.string())]
    + [("choices", pa.list_(pa.string())), ("answer", pa.int8())]
    + [(name, pa.string()) for name in ("hint", "task", "grade", "subject", "topic", "category", "skill")]
    + [("lecture", pa.string()), ("solution", pa.string())]
)


def hf_rows(pids, color=(0, 90, 0)):
    return [{k: v for k, v in {**PROBLEMS[pid], "image": png(color)}.items() if k != "split"} for pid in pids]


def test_the_hugging_face_layout_reads_the_test_files_only_and_matches_the_release(tmp_path):
    folder = tmp_path / "ScienceQA" / "ScienceQA-IMG"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(hf_rows(["12", "4"]), HF_SCHEMA), folder / "test-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(hf_rows(["9"]), HF_SCHEMA), folder / "validation-00000-of-00001.parquet")
    items = load_scienceqa_hf(folder)
    original = load_scienceqa(write_release(tmp_path / "sqa"))
    assert [item["id"] for item in items] == ["0", "1"]  # row numbers: the layout has no problem id
    ignore = ("id", "image", "image_path")
    assert [{k: v for k, v in i.items() if k not in ignore} for i in items] == [
        {k: v for k, v in i.items() if k not in ignore} for i in original
    ]
    assert [i["image"] for i in items] == ["0.png", "1.png"]
    assert all(Image.open(i["image_path"]).getpixel((0, 0)) == (0, 90, 0) for i in items)


def test_a_save_to_disk_folder_reads_its_test_split_only(tmp_path):
    for split, pids in (("test", ["12", "4"]), ("validation", ["9"])):
        (tmp_path / "sqa" / split).mkdir(parents=True)
        table = pa.Table.from_pylist(hf_rows(pids), HF_SCHEMA)
        with ipc.new_stream(str(tmp_path / "sqa" / split / "data-00000-of-00001.arrow"), table.schema) as writer:
            writer.write_table(table)
    items = load_scienceqa_hf(tmp_path / "sqa")
    assert [(i["id"], i["question"]) for i in items] == [("0", "Which word is a noun?"), ("1", "Which animal has fur?")]


def test_a_hugging_face_row_without_an_image_or_a_bad_answer_is_named_by_row(tmp_path):
    rows = hf_rows(["12", "4"])
    rows[1]["image"] = None
    pq.write_table(pa.Table.from_pylist(rows, HF_SCHEMA), tmp_path / "test-00000-of-00001.parquet")
    with pytest.raises(DataFormatError, match="test-00000-of-00001.parquet:2: image: no image"):
        load_scienceqa_hf(tmp_path)
    rows = hf_rows(["4"])
    rows[0]["answer"] = 5
    pq.write_table(pa.Table.from_pylist(rows, HF_SCHEMA), tmp_path / "one.parquet")
    with pytest.raises(DataFormatError, match="one.parquet:1: answer: expected a choice index 0..1, got 5"):
        load_scienceqa_hf(tmp_path / "one.parquet")
    (tmp_path / "val").mkdir()
    pq.write_table(pa.Table.from_pylist(rows, HF_SCHEMA), tmp_path / "val" / "validation-0.parquet")
    with pytest.raises(DataFormatError, match="<files>: expected the test split"):
        load_scienceqa_hf(tmp_path / "val")


CHOICES = ["cat", "dog", "bird", "fish"]  # the answer is B (dog)
# answer -> right under (official, lmms_eval, vlmevalkit)
WORKED = {
    "B": (True, True, True),
    "b": (False, True, False),  # lmms-eval ignores case; LLaVA's letters are upper-case
    "B.": (False, True, True),  # LLaVA's prefix rule needs ". " (three characters)
    "B. dog": (True, True, True),
    "(B) dog": (False, False, True),
    "The answer is B.": (True, False, True),
    "The answer is B": (False, False, True),  # LLaVA's pattern needs one more character after the letter
    "the answer is b": (False, False, True),  # VLMEvalKit's "answer is" pattern ignores case
    "Answer: B": (False, False, True),
    "dog": (False, False, True),  # VLMEvalKit matches the option text
    "The answer is A. No, the answer is B.": (False, False, False),  # two statements; VLMEvalKit takes the first
    "A dog": (False, False, False),  # VLMEvalKit reads the article as option A
    "Cannot determine the answer, maybe dog": (False, False, False),  # a refusal stops VLMEvalKit before the text
    "B is the one, because dogs bark at night": (False, False, False),  # B not in the last 4 tokens, answer too long
    "": (False, False, False),
}


@pytest.mark.parametrize("prediction", list(WORKED))
def test_each_parser_on_worked_answers(prediction):
    record = {"prediction": prediction, "answer": "B", "choices": CHOICES}
    got = tuple(ScienceQAImg.correct(record, parser) for parser in ("official", "lmms_eval", "vlmevalkit"))
    assert got == WORKED[prediction]


def test_vlmevalkit_quirks_beyond_the_worked_answers():
    options = {"A": "pear", "B": "apple"}
    assert choice_vlmevalkit("I think the answer is Apple", options) == "A"  # "answer is A", no word boundary
    assert choice_vlmevalkit("Option Z, the apple", options) is None  # a lone Z token: refused, text not tried
    assert choice_vlmevalkit("B", options) == "B"
    assert choice_vlmevalkit("Failed to obtain answer via API B", options) is None  # straight to the option texts
    assert choice_vlmevalkit("apple", options) == "B" and choice_vlmevalkit("apple or pear", options) is None


def test_official_letters_stay_within_the_questions_choices():
    assert official_letter("E", 5) == "E" and official_letter("E", 4) is None
    assert official_letter("The answer is F.", 5) is None  # a letter past E: unparsed, not a random pick
    assert official_letter("C. x", 3) == "C" and official_letter("C.\nx", 3) is None
    assert official_letter("The answer is C\n", 3) is None  # "." does not match a newline
    assert lmms_eval_correct("C.", "C") and not lmms_eval_correct("c.", "C") and lmms_eval_correct(" c ", "C")


def records(parser_answers):
    """Five questions: (subject, grade, hint) and predictions; the answers are B, B, A, A, A of three choices."""
    meta = [
        ("natural science", "grade3", "h", "B"),
        ("natural science", "grade8", "", "B"),
        ("social science", "grade5", "h", "A"),
        ("language science", "grade10", "", "A"),
        ("social science", "grade12", "h", "A"),
    ]
    return [
        {
            "benchmark": "scienceqa_img",
            "id": str(n),
            "question": "q",
            "hint": hint,
            "choices": ["cat", "dog", "bird"],
            "answer": answer,
            "subject": subject,
            "grade": grade,
            "prediction": prediction,
            "prompt": "p",
        }
        for n, ((subject, grade, hint, answer), prediction) in enumerate(zip(meta, parser_answers))
    ]


PREDICTIONS = ["B", "B.", "The answer is A.", "C", "a"]


def test_scores_by_subject_context_and_grade_band():
    right = {"official": [1, 0, 1, 0, 0], "lmms_eval": [1, 1, 0, 0, 1], "vlmevalkit": [1, 1, 1, 0, 0]}
    for parser, hits in right.items():
        assert [ScienceQAImg.correct(r, parser) for r in records(PREDICTIONS)] == [bool(h) for h in hits]
    assert score_records(records(PREDICTIONS), parser="official") == {
        "scienceqa_img/overall": 2 / 5,
        "scienceqa_img/NAT/accuracy": 1 / 2,
        "scienceqa_img/SOC/accuracy": 1 / 2,
        "scienceqa_img/LAN/accuracy": 0.0,
        "scienceqa_img/G1-6/accuracy": 2 / 2,
        "scienceqa_img/G7-12/accuracy": 0 / 3,
        "scienceqa_img/TXT/accuracy": 2 / 3,
    }
    assert score_records(records(PREDICTIONS), parser="lmms_eval") == {
        "scienceqa_img/overall": 3 / 5,
        "scienceqa_img/NAT/accuracy": 2 / 2,
        "scienceqa_img/SOC/accuracy": 1 / 2,
        "scienceqa_img/LAN/accuracy": 0.0,
        "scienceqa_img/G1-6/accuracy": 1 / 2,
        "scienceqa_img/G7-12/accuracy": 2 / 3,
        "scienceqa_img/TXT/accuracy": 2 / 3,
    }
    with pytest.raises(ValueError, match="grade 'grade0'"):
        ScienceQAImg.score([{**records(PREDICTIONS)[0], "grade": "grade0"}], "official")


def test_the_predictions_file_checks_choices_answer_and_breakdown_fields(tmp_path):
    path = tmp_path / "predictions.jsonl"
    good = records(PREDICTIONS)[0]
    path.write_text(json.dumps(good) + "\n")
    assert read_predictions(path) == [good]
    for change, field in [
        ({"choices": "cat, dog"}, "choices"),
        ({"answer": "D"}, "answer"),
        ({"subject": "maths"}, "subject"),
        ({"hint": None}, "hint"),
    ]:
        path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "id": "x", **change}) + "\n")
        with pytest.raises(DataFormatError, match=f"predictions.jsonl:2: {field}: "):
            read_predictions(path)


def test_the_shapes_files_load_and_answer_from_their_scene(tmp_path):
    root = generate_shapes(tmp_path / "shapes", seed=5, n_train=2, n_eval=12)
    items = load_scienceqa(root / "scienceqa", root / "scienceqa" / "images", check_images=True)
    manifest = json.loads((root / "manifest.json").read_text())
    assert len(items) == manifest["counts"]["scienceqa_img"] >= 12 * 3  # background, count, existence always
    scenes = json.loads((root / "scenes.json").read_text())
    by_bytes = {(root / name).read_bytes(): scene for name, scene in scenes.items() if name.startswith("eval_")}
    for item in items:
        scene, truth = by_bytes[Path(item["image_path"]).read_bytes()], item["choices"][ord(item["answer"]) - 65]
        objects = scene["objects"]
        if item["skill"] == "background":
            assert truth == scene["background"]
        elif item["skill"] == "count":
            assert truth == str(len(objects))
        elif item["skill"] == "existence":
            present = {o["shape"] for o in objects}
            assert truth in present and not present & (set(item["choices"]) - {truth})
        elif item["skill"] == "position":
            (cell,) = [o["cell"] for o in objects if f"the {o['color']} {o['shape']} on" in item["question"]]
            assert truth == {0: "left", 2: "right"}[cell[1]]
        else:
            colours = Counter(o["color"] for o in objects).most_common()
            assert truth == colours[0][0] and 2 * colours[0][1] > len(objects)
        assert annotate_scope(item) == {"scope": question_scope(item["skill"])}
    assert {i["subject"] for i in items} == {"natural science", "social science", "language science"}
    assert {i["grade"][5:] in ("7", "8") for i in items} == {True, False}  # both grade bands
    assert 0 < sum(bool(i["hint"]) for i in items) < len(items)
    assert all(i["prompt"].startswith(f"Context: {i['hint']}\n") == bool(i["hint"]) for i in items)


def test_the_ddp_metric_scores_records_with_their_choices_list_as_the_scorer_does():
    """`BenchmarkScores` carries records as JSON: the list-valued `choices` survives, and a question answered on two
    ranks counts once."""
    from sinkflow.eval.benchmark_scores import BenchmarkScores

    every = records(PREDICTIONS)
    metric = BenchmarkScores(parser="lmms_eval")
    metric.update(every[:3])
    metric.update(every[2:])  # record 2 again, as the distributed sampler repeats one
    assert metric.compute() == score_records(every, parser="lmms_eval")
