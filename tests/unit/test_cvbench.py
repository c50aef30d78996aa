"""CV-Bench: both layouts load to the same items, bad rows are named, each parser reads answers as its toolkit does,
the score is the release's source-weighted formula, and the shapes data exercises all of it."""

import io
import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from sinkflow.benchmarks.cvbench import (
    CVBench,
    lmms_eval_letter,
    load_cvbench,
    load_cvbench_hf,
    official_letter,
)
from sinkflow.data.errors import DataFormatError
from sinkflow.data.predictions import read_predictions
from sinkflow.eval.benchmark_scores import BenchmarkScores
from sinkflow.eval.metrics import score_records
from sinkflow.shapes import annotate_scope, generate_shapes


def row(idx, kind, task, source, choices, answer, question="Which?"):
    """A release row (the columns of test_2d.jsonl / test_3d.jsonl)."""
    lettered = "".join(f"\n({chr(65 + i)}) {c}" for i, c in enumerate(choices))
    return {
        "idx": idx,
        "type": kind,
        "task": task,
        "question": question,
        "choices": choices,
        "answer": answer,
        "prompt": f"{question} Select from the following choices.{lettered}",
        "filename": f"img/{kind}/{task.lower()}/{source.lower()}_{idx}.png",
        "source": source,
        "source_dataset": f"{source} test",
        "source_filename": f"{idx}.jpg",
        "target_class": None,
        "target_size": None,
        "bbox": None,
    }


ROWS_2D = [
    row(0, "2D", "Count", "ADE20K", ["3", "2", "1", "0"], "(C)", "How many organs are in the image?"),
    row(1, "2D", "Relation", "COCO", ["left", "right"], "(B)", "Where is the cup with respect to the plate?"),
]
ROWS_3D = [row(2, "3D", "Depth", "Omni3D", ["lamp", "chair"], "(A)", "Which object is closer to the camera?")]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def png(color) -> dict:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def test_the_release_folder_loads_2d_then_3d_with_each_prompt_style(tmp_path):
    write_jsonl(tmp_path / "test_2d.jsonl", ROWS_2D)
    write_jsonl(tmp_path / "test_3d.jsonl", ROWS_3D)
    items = load_cvbench(tmp_path)
    assert [(i["id"], i["type"], i["category"], i["source"], i["answer"]) for i in items] == [
        ("0", "2D", "Count", "ADE20K", "(C)"),
        ("1", "2D", "Relation", "COCO", "(B)"),
        ("2", "3D", "Depth", "Omni3D", "(A)"),
    ]
    first = items[0]
    assert first["image_path"] == str(tmp_path.resolve() / "img/2D/count/ade20k_0.png")
    assert first["choices"] == ["3", "2", "1", "0"] and first["source_dataset"] == "ADE20K test"
    dataset_prompt = "How many organs are in the image? Select from the following choices.\n(A) 3\n(B) 2\n(C) 1\n(D) 0"
    # lmms-eval (the default): its note with the letters of this question, an empty line, then the row's prompt
    assert first["prompt"] == (
        "Note: You only need to respond with A, B, C, D without providing any additional information.\n\n"
        + dataset_prompt
    )
    assert items[1]["prompt"].startswith("Note: You only need to respond with A, B without providing")
    official = load_cvbench(tmp_path, prompt_style="official")[0]["prompt"]
    assert official == dataset_prompt + "\nAnswer with the option's letter from the given choices directly."
    assert load_cvbench(tmp_path, prompt_style="vlmevalkit")[0]["prompt"] == dataset_prompt
    with pytest.raises(ValueError, match=r"`dataset.eval_sets.cvbench.prompt_style` must be one of"):
        load_cvbench(tmp_path, prompt_style="llava")


def test_an_older_single_file_a_file_path_and_ambiguous_or_missing_files(tmp_path):
    write_jsonl(tmp_path / "test.jsonl", ROWS_2D + ROWS_3D)
    assert [i["id"] for i in load_cvbench(tmp_path)] == ["0", "1", "2"]
    write_jsonl(tmp_path / "test_3d.jsonl", ROWS_3D)
    assert [i["id"] for i in load_cvbench(tmp_path / "test_3d.jsonl", image_root=tmp_path / "x")] == ["2"]
    with pytest.raises(DataFormatError, match="both test.jsonl and test_2d/test_3d.jsonl"):
        load_cvbench(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFormatError, match="expected test_2d.jsonl and/or test_3d.jsonl, or test.jsonl"):
        load_cvbench(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="CV-Bench not found"):
        load_cvbench(tmp_path / "absent")


def test_the_hugging_face_parquet_loads_to_the_same_items(tmp_path):
    rows = [dict(r, image=png((40 * r["idx"], 0, 0))) for r in ROWS_2D + ROWS_3D]
    data = tmp_path / "CV-Bench"
    data.mkdir()
    pq.write_table(pa.Table.from_pylist(rows[:2]), data / "test_2d.parquet")
    pq.write_table(pa.Table.from_pylist(rows[2:]), data / "test_3d.parquet")
    hf = load_cvbench_hf(data)
    write_jsonl(tmp_path / "test_2d.jsonl", ROWS_2D)
    write_jsonl(tmp_path / "test_3d.jsonl", ROWS_3D)
    original = load_cvbench(tmp_path)
    assert [{k: v for k, v in i.items() if k != "image_path"} for i in hf] == [
        {k: v for k, v in i.items() if k != "image_path"} for i in original
    ]
    # each image is written once, under the release's file name beside the data
    assert hf[2]["image_path"] == str((tmp_path / "CV-Bench_images" / "img/3D/depth/omni3d_2.png").resolve())
    assert Image.open(hf[2]["image_path"]).getpixel((0, 0)) == (80, 0, 0)
    pq.write_table(pa.Table.from_pylist([dict(rows[0], filename="../escape.png")]), data / "test_2d.parquet")
    with pytest.raises(DataFormatError, match=r"test_2d.parquet:1: filename: expected a path relative"):
        load_cvbench_hf(data)
    assert not (tmp_path / "escape.png").exists()


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"idx": "4"}, "idx", "expected int, got '4'"),
        ({"type": "2.5D"}, "type", "expected one of ('2D', '3D')"),
        ({"task": "Depth"}, "task", "expected one of ('Count', 'Relation') for 2D, got 'Depth'"),
        ({"source": "Omni3D"}, "source", "expected one of ('ADE20K', 'COCO') for 2D, got 'Omni3D'"),
        ({"choices": "left, right"}, "choices", "expected list"),
        ({"choices": ["left"]}, "choices", "expected a list of 2 to 26 strings, got ['left']"),
        ({"answer": "B"}, "answer", "expected '(A)' to '(B)', got 'B'"),
        ({"answer": "(C)"}, "answer", "expected '(A)' to '(B)', got '(C)'"),
        ({"filename": "/abs/img.png"}, "filename", "expected a path relative to the dataset root"),
        ({"prompt": None}, "prompt", "expected str, got None"),
    ],
)
def test_a_bad_row_is_named_by_file_line_and_field(tmp_path, change, field, message):
    path = write_jsonl(tmp_path / "test_2d.jsonl", [ROWS_2D[0], dict(ROWS_2D[1], **change)])
    with pytest.raises(DataFormatError, match="^" + re.escape(f"{path}:2: {field}: {message}")):
        load_cvbench(tmp_path)


def test_an_idx_repeated_across_the_two_files_names_its_first_place(tmp_path):
    write_jsonl(tmp_path / "test_2d.jsonl", ROWS_2D)
    path = write_jsonl(tmp_path / "test_3d.jsonl", [dict(ROWS_3D[0], idx=1)])
    with pytest.raises(DataFormatError, match=rf"^{path}:1: idx: duplicate idx 1 \(first at .*test_2d.jsonl:2\)"):
        load_cvbench(tmp_path)


# (response, what Cambrian-1's extract_mcq_answer reads): lower-case, after the last "answer is" / "answer:",
# first character after a leading "(".
OFFICIAL = [
    ("B", "b"),
    ("(B) right", "b"),
    ("b.", "b"),
    ("The answer is B.", "b"),
    ("Answer: (C)", "c"),
    ("The answer is: (B)", ":"),  # the colon stays after "answer is" is cut, and it is read
    ("Right, so (B)", "r"),
    ("**A**", "*"),
    ("", ""),
]


@pytest.mark.parametrize(("response", "letter"), OFFICIAL)
def test_official_reading(response, letter):
    assert official_letter(response) == letter


# lmms-eval's cv_bench: the first letter at the very start, any case, after "(" and spaces.
LMMS_EVAL = [
    ("B", "B"),
    ("(b)", "B"),
    ("  ( C ) 1", "C"),
    ("A. left", "A"),
    ("The answer is B", "T"),
    ("**A**", ""),
    ("1", ""),
    ("", ""),
    ("ſo B", "S"),  # Python's case-insensitive [A-Z] matches the long s, whose upper case is S
]


@pytest.mark.parametrize(("response", "letter"), LMMS_EVAL)
def test_lmms_eval_reading(response, letter):
    assert lmms_eval_letter(response) == letter


def record(idx, source, task, answer, prediction, choices=("lamp", "chair")):
    kind = "3D" if source == "Omni3D" else "2D"
    return {
        "benchmark": "cvbench",
        "id": str(idx),
        "type": kind,
        "category": task,
        "source": source,
        "question": "q",
        "choices": list(choices),
        "answer": answer,
        "prediction": prediction,
        "prompt": "p",
    }


def test_the_score_is_the_release_formula_over_sources():
    """ADE20K 1/2, COCO 3/4, Omni3D 1/3: 2D = (0.5 + 0.75) / 2 = 0.625, 3D = 1/3, CV-Bench = (0.625 + 1/3) / 2."""
    records = [
        record(0, "ADE20K", "Count", "(A)", "A"),
        record(1, "ADE20K", "Relation", "(B)", "A"),
        record(2, "COCO", "Count", "(A)", "(A) 3"),
        record(3, "COCO", "Count", "(B)", "b"),
        record(4, "COCO", "Relation", "(A)", "The answer is A."),
        record(5, "COCO", "Relation", "(B)", "A"),
        record(6, "Omni3D", "Depth", "(B)", "B"),
        record(7, "Omni3D", "Depth", "(A)", "B"),
        record(8, "Omni3D", "Distance", "(A)", "C"),
    ]
    scores = CVBench.score(records, "official")
    assert scores == {
        "cvbench/accuracy": 5 / 9,
        "cvbench/ade20k/accuracy": 0.5,
        "cvbench/coco/accuracy": 0.75,
        "cvbench/omni3d/accuracy": 1 / 3,
        "cvbench/count/accuracy": 1.0,
        "cvbench/relation/accuracy": 1 / 3,
        "cvbench/depth/accuracy": 0.5,
        "cvbench/distance/accuracy": 0.0,
        "cvbench/2d": 0.625,
        "cvbench/3d": 1 / 3,
        "cvbench/overall": 1 / 2 * ((0.5 + 0.75) / 2 + 1 / 3),
    }
    assert scores["cvbench/overall"] == pytest.approx(23 / 48)
    # lmms-eval reads "The answer is A." as T: one COCO question fewer
    lmms = CVBench.score(records, "lmms_eval")
    assert lmms["cvbench/coco/accuracy"] == 0.5 and lmms["cvbench/overall"] == 1 / 2 * ((0.5 + 0.5) / 2 + 1 / 3)
    # the metric over split updates and score_records agree with the class
    metric = BenchmarkScores()
    metric.update(records[:4])
    metric.update(records[4:])
    assert metric.compute() == score_records(records) == scores


def test_a_subset_without_3d_has_no_overall_and_the_2d_of_the_sources_present():
    scores = CVBench.score([record(0, "COCO", "Count", "(A)", "A"), record(1, "COCO", "Count", "(A)", "B")], "official")
    assert scores["cvbench/2d"] == scores["cvbench/coco/accuracy"] == 0.5
    assert "cvbench/3d" not in scores and "cvbench/overall" not in scores
    with pytest.raises(ValueError, match="unknown source 'VOC'"):
        CVBench.score([record(0, "VOC", "Count", "(A)", "A")], "official")


def test_the_3d_script_also_accepts_the_right_choice_text_of_one_character():
    """Omni3D's script compares the one-character reading with the right choice's text as well."""
    assert CVBench.correct(record(0, "Omni3D", "Depth", "(B)", "x", choices=("lamp", "x")), "official")
    assert not CVBench.correct(record(0, "COCO", "Count", "(B)", "x", choices=("lamp", "x")), "official")
    assert not CVBench.correct(record(0, "Omni3D", "Depth", "(A)", "lamp", choices=("lamp", "chair")), "official")


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"source": "VOC"}, "source", "expected one of"),
        ({"source": "Omni3D"}, "type", "expected tasks ('Count', 'Relation') and sources ('ADE20K', 'COCO') for 2D"),
        ({"choices": "lamp"}, "choices", "expected a list of 2 to 26 strings, got 'lamp'"),
        ({"answer": "(C)"}, "answer", "expected '(A)' to '(B)', got '(C)'"),
    ],
)
def test_a_predictions_file_record_is_checked(tmp_path, change, field, message):
    path = tmp_path / "predictions.jsonl"
    good = record(0, "COCO", "Count", "(A)", "A")
    bad = dict(record(1, "COCO", "Count", "(A)", "A"), **change)
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataFormatError, match=re.escape(f"predictions.jsonl:2: {field}: {message}")):
        read_predictions(path)
    no_choices = {k: v for k, v in good.items() if k != "choices"}
    path.write_text(json.dumps(no_choices) + "\n")
    with pytest.raises(DataFormatError, match="predictions.jsonl:1: choices: expected a list"):
        read_predictions(path)


def test_the_shapes_data_answers_from_the_scene_and_exercises_the_formula(tmp_path):
    root = generate_shapes(tmp_path, seed=1, n_train=2, n_eval=24, image_size=48)
    items = load_cvbench(root / "cvbench", root, check_images=True, prompt_style="official")
    counts = json.loads((root / "manifest.json").read_text())["counts"]
    assert len(items) == counts["cvbench"] and [i["idx"] for i in items] == list(range(len(items)))
    assert {(i["source"], i["category"]) for i in items} == {
        (s, t) for s in ("ADE20K", "COCO") for t in ("Count", "Relation")
    } | {("Omni3D", "Depth"), ("Omni3D", "Distance")}
    scenes = json.loads((root / "scenes.json").read_text())
    for item in items:
        objects = {f"{o['color']} {o['shape']}": o["cell"] for o in scenes[item["image"]]["objects"]}
        right = item["choices"][ord(item["answer"][1]) - 65]
        question = item["question"]
        if item["category"] == "Count":
            assert right == str(len(objects))
        elif item["category"] == "Relation":
            a, b = question.removeprefix("Where is the ").removesuffix("?").split(" with respect to the ")
            (ra, ca), (rb, cb) = objects[a], objects[b]
            if ca != cb:
                assert right == ("left" if ca < cb else "right")
            else:
                assert right == ("above" if ra < rb else "below")
        elif item["category"] == "Depth":
            assert objects[right][0] < objects[next(c for c in item["choices"] if c != right)][0]
        else:
            anchor = question.split("closer to the ")[1].split(" in the image")[0]
            far = next(c for c in item["choices"] if c != right)
            dist = {c: sum((x - y) ** 2 for x, y in zip(objects[c], objects[anchor])) for c in item["choices"]}
            assert dist[right] < dist[far]
        assert annotate_scope(item) == {"scope": "global" if item["category"] == "Count" else "local"}
    perfect = score_records([dict(i, prediction=i["answer"][1], **annotate_scope(i)) for i in items])
    assert perfect["cvbench/overall"] == perfect["cvbench/2d"] == perfect["cvbench/3d"] == 1.0
    assert perfect["cvbench/global/accuracy"] == perfect["cvbench/local/accuracy"] == 1.0
    assert {i["source_dataset"] for i in items if i["type"] == "3D"} == {"shapes (image-plane proxy)"}


def test_a_one_image_shapes_set_writes_only_the_files_it_has_questions_for(tmp_path):
    root = generate_shapes(tmp_path, seed=0, n_train=2, n_eval=1)
    files = sorted(p.name for p in (root / "cvbench").iterdir())
    assert files and set(files) <= {"test_2d.jsonl", "test_3d.jsonl"} and "test_2d.jsonl" in files
    assert (
        len(load_cvbench(root / "cvbench", root))
        == json.loads((root / "manifest.json").read_text())["counts"]["cvbench"]
    )
