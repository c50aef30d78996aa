"""MMMU: both hub layouts load to the same items (multi-image prompts included), bad rows are named, each parser's
rules hold on worked and adversarial answers, scores follow the official sums and random stream, and the shapes
data loads through the same loader."""

import io
import json
import os
import random
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
from PIL import Image

from sinkflow.benchmarks.mmmu import (
    MMMU,
    SUBJECTS,
    choice_letter,
    extract_numbers,
    load_mmmu,
    normalize,
    open_candidates,
)
from sinkflow.data.errors import DataFormatError
from sinkflow.shapes import annotate_scope, generate_shapes

MC = "\n\nAnswer with the option's letter from the given choices directly."
OPEN = "\n\nAnswer the question using a single word or phrase."


def png(shade: int) -> dict:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (shade, 0, 0)).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def row(qid, question, options="[]", answer="A", kind="multiple-choice", images=(1,), **extra) -> dict:
    cells = {f"image_{k}": png(k * 30) if k in images else None for k in range(1, 8)}
    return {"id": qid, "question": question, "options": options, "answer": answer, "question_type": kind,
            "subfield": "", **cells, **extra}  # fmt: skip


ROWS = {
    "Art": [
        row("validation_Art_1", "<image 1> Which style?", "['Baroque', 'Rococo']", "B"),
        # cites image 2 before image 1, image 1 twice, and image 3 only in an option; image 4 is never cited
        row(
            "validation_Art_2",
            "Compare <image 2> with <image 1>. Is <image 1> older?",
            "['Yes', 'No', '<image 3>']",
            "A",
            images=(1, 2, 3, 4),
        ),
    ],
    "Math": [row("validation_Math_1", "<image 1> What is x?", "[]", "['24/7', '3.429']", "open")],
}


def write_per_subject(root: Path, rows=ROWS) -> Path:
    """MMMU/MMMU: a folder per subject, each with dev / validation / test parquet files."""
    for subject, subject_rows in rows.items():
        (root / subject).mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(subject_rows), root / subject / "validation-00000-of-00001.parquet")
        dev = [dict(r, id=r["id"].replace("validation", "dev")) for r in subject_rows]
        pq.write_table(pa.Table.from_pylist(dev), root / subject / "dev-00000-of-00001.parquet")
    return root


def test_both_hub_layouts_load_the_same_items_with_lmms_evals_prompt_and_images_where_cited(tmp_path):
    per_subject = load_mmmu(write_per_subject(tmp_path / "MMMU"))
    (tmp_path / "lmms" / "data").mkdir(parents=True)
    every = [r for rows in ROWS.values() for r in rows]
    pq.write_table(pa.Table.from_pylist(every), tmp_path / "lmms" / "data" / "validation-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(every[:1]), tmp_path / "lmms" / "data" / "test-00000-of-00001.parquet")
    single_set = load_mmmu(tmp_path / "lmms")
    (tmp_path / "disk" / "validation").mkdir(parents=True)
    table = pa.Table.from_pylist(every)
    with ipc.new_stream(tmp_path / "disk" / "validation" / "data-00000-of-00001.arrow", table.schema) as writer:
        writer.write_table(table)
    saved = load_mmmu(tmp_path / "disk")

    def strip(items):
        return [{k: v for k, v in i.items() if k != "image_path"} for i in items]

    assert strip(per_subject) == strip(single_set) == strip(saved)
    one, two, open_ = per_subject
    assert [i["id"] for i in per_subject] == ["validation_Art_1", "validation_Art_2", "validation_Math_1"]
    assert one["prompt"] == "<image 1> Which style?\nA. Baroque\nB. Rococo" + MC  # the citation stays as text
    assert one["image_path"] == str((tmp_path / "MMMU_images" / "validation_Art_1_1.png").resolve())
    # One <image> per image, at its first citation; images in that order; a repeated citation stays text
    assert two["prompt"] == "Compare <image> with <image>. Is <image 1> older?\nA. Yes\nB. No\nC. <image>" + MC
    assert [Path(p).name for p in two["image_path"]] == [f"validation_Art_2_{k}.png" for k in (2, 1, 3)]
    assert [Image.open(p).getpixel((0, 0))[0] for p in two["image_path"]] == [60, 30, 90]
    assert open_["prompt"] == "<image 1> What is x?" + OPEN and open_["category"] == "Math"
    assert (open_["question_type"], open_["answer"], open_["options"]) == ("open", "['24/7', '3.429']", "[]")
    assert load_mmmu(tmp_path / "MMMU", split="dev")[0]["id"] == "dev_Art_1"
    with pytest.raises(ValueError, match=r"`dataset.eval_sets.mmmu.split` must be one of \('dev', 'validation'\)"):
        load_mmmu(tmp_path / "MMMU", split="test")


@pytest.mark.parametrize(
    ("change", "where", "message"),
    [
        ({"id": "validation_Cooking_1"}, "id", "expected validation_<subject>_<n> with a subject of MMMU"),
        ({"id": "dev_Art_1"}, "id", "expected validation_<subject>_<n>"),
        ({"answer": "C"}, "answer", r"expected one of \['A', 'B'\] \(one per option\), got 'C'"),
        ({"options": "Baroque, Rococo"}, "options", "expected the text of a list of strings"),
        ({"question_type": "short-answer"}, "question_type", "expected one of"),
        ({"question": "<image 2> Which style?"}, "image_2", "<image 2> is cited but the row has no such image"),
        ({"question": "Which style?"}, "question", r"expected <image k> in the question or its options, got none"),
        ({"question": "<image> <image 1> Which style?"}, "question", "the text holds <image>"),
        ({"answer": " "}, "answer", "expected one of"),
        (
            {"options": "['Baroque', 'Rococo']", "answer": " ", "question_type": "open"},
            "answer",
            "expected an answer, got an empty one",
        ),
    ],
)
def test_a_bad_row_is_named_by_file_row_and_field(tmp_path, change, where, message):
    rows = {"Art": [ROWS["Art"][0], {**ROWS["Art"][0], "id": "validation_Art_2", **change}]}
    write_per_subject(tmp_path / "MMMU", rows)
    file = tmp_path / "MMMU" / "Art" / "validation-00000-of-00001.parquet"
    with pytest.raises(DataFormatError, match=rf"^{re.escape(str(file))}:2: {where}: {message}"):
        load_mmmu(tmp_path / "MMMU")


def test_a_duplicate_id_names_both_places_and_a_folder_without_the_split_is_named(tmp_path):
    write_per_subject(tmp_path / "MMMU", {"Art": [ROWS["Art"][0], ROWS["Art"][0]]})
    with pytest.raises(
        DataFormatError, match=r"Art/validation-00000-of-00001.parquet:2: id: duplicate id .* \(first in"
    ):
        load_mmmu(tmp_path / "MMMU")
    (tmp_path / "empty").mkdir()
    pq.write_table(pa.Table.from_pylist([ROWS["Art"][0]]), tmp_path / "empty" / "test-00000-of-00001.parquet")
    with pytest.raises(DataFormatError, match=r"empty: <files>: expected validation-\*.parquet files"):
        load_mmmu(tmp_path / "empty")


OPTIONS = ["red circle", "blue square", "green star", "yellow star"]


@pytest.mark.parametrize(
    ("response", "official", "lmms_eval"),
    [
        ("B", "B", "B"),
        ("(C)", "C", "C"),
        ("The answer is B.", "B", "B"),
        ("(A) is wrong but (C) is right", "C", "C"),  # the rightmost bracketed letter
        ("I think it is the blue square, not the red one", "B", "B"),  # an option's text, in a long answer
        ("A or C? I would say C then", "C", "C"),  # the last ` X `
        ("Answer:B", None, "B"),  # `X ` (lmms-eval) needs no space before the letter; ` X ` (official) does
        ("B. Because the line rises", None, "B"),  # `X.` is lmms-eval's alone; 5 words are too few for text
        ("DNA is my answer", None, "A"),  # lmms-eval reads the A of `DNA ` as a letter
        ("b", None, None),  # letters are upper case
    ],
)
def test_multiple_choice_letters_per_parser(response, official, lmms_eval):
    """None: nothing matches, so the letter is the next draw of the parser's stream (the first one here)."""
    for parser, expected in (("official", official), ("lmms_eval", lmms_eval)):
        seed = {"official": 42, "lmms_eval": 0}[parser]
        drawn = random.Random(seed).choice("ABCD")
        assert choice_letter(response, OPTIONS, parser, random.Random(seed)) == (expected or drawn), parser


def test_open_answers_are_normalised_as_the_official_parser_does():
    assert normalize(" 1,000 ") == [1000.0] and normalize("3.14159") == [3.14] and normalize("C") == [" c", "c "]
    assert normalize("Embryonic") == ["embryonic"] and normalize("1e3") == [1000.0]
    # Each pattern on its own: 234 again (after the comma), the 3 of 6e3, the 2 of "2.5," (a digit or comma may not
    # follow a plain number, so 2.5 backs off to 2), the 1 of x1
    assert extract_numbers("so -1,234 or 6e3 or 2.5, not x1") == ["-1,234", "6e3", "234", "3", "2", "1"]
    # Per line, the shortest tail after an indicator word; lower-casing hides the ". " + capital sentence split
    assert open_candidates("The pH is 12.97. So it is basic") == ["basic"]
    assert open_candidates("The pH is 12.97.\nTherefore x = 3") == ["12.97.", 3.0, 12.97]  # the last line: after `=`
    assert open_candidates("Embryonic") == ["embryonic"]


def record(answer, prediction, kind="open", options="[]", qid="validation_Math_1") -> dict:
    return {"benchmark": "mmmu", "id": qid, "category": qid.split("_", 1)[1].rsplit("_", 1)[0], "question": "q",
            "question_type": kind, "options": options, "answer": answer, "prediction": prediction}  # fmt: skip


@pytest.mark.parametrize(
    ("answer", "prediction", "official", "vlmevalkit"),
    [
        ("12.97", "The pH is therefore 12.97.", True, True),  # VLMEvalKit: the answer's text is in the response
        ("8", "There are 18 apples", False, True),  # ... even inside another number
        ("embryonic", "It is embryonic tissue", True, True),
        ("C", "C", True, False),  # the truth is the letter C, which the two made-up choices A / B never give
        ("B", "B", True, True),  # ... whereas B is their second choice
        ("A", "The answer is A", True, True),
        ("['24/7', '3.429']", "about 3.429", True, False),  # several accepted answers
        ("Tampa", "Tampa", True, True),  # the answer is choice A
        ("Tampa", "Other Answers", False, False),
    ],
)
def test_open_questions_per_parser(answer, prediction, official, vlmevalkit):
    """lmms-eval (at 75571cfe) matches the first candidate one character at a time: never right."""
    rec = record(answer, prediction)
    assert (MMMU.correct(rec, "official"), MMMU.correct(rec, "lmms_eval")) == (official, False)
    assert MMMU.correct(rec, "vlmevalkit") == vlmevalkit


def test_scores_per_subject_discipline_and_overall_by_hand():
    rows = [
        ("validation_Art_1", "A", "A"),
        ("validation_Art_2", "B", "(C)"),
        ("validation_Design_1", "D", "D"),
        ("validation_Accounting_1", "C", "B"),
    ]
    records = [record(a, p, "multiple-choice", str(OPTIONS), qid) for qid, a, p in rows]
    expected = {
        "mmmu/Art/accuracy": 0.5,
        "mmmu/Design/accuracy": 1.0,
        "mmmu/Accounting/accuracy": 0.0,
        "mmmu/Art and Design/accuracy": 2 / 3,
        "mmmu/Business/accuracy": 0.0,
        "mmmu/overall": 0.5,
    }
    for parser in ("official", "lmms_eval", "vlmevalkit"):
        assert MMMU.score(records, parser) == expected
        assert MMMU.score(records[::-1], parser) == expected


def test_groups_add_each_subjects_accuracy_times_its_size_in_the_official_order():
    """Accounting 13/23, Agriculture 0/3, Art 1/5, Art_Theory 1/5: the official sum of accuracy x size gives
    0.41666666666666663, VLMEvalKit's mean over the questions 15/36 = 0.4166666666666667."""
    records = []
    for subject, right, size in (("Accounting", 13, 23), ("Agriculture", 0, 3), ("Art", 1, 5), ("Art_Theory", 1, 5)):
        for n in range(size):
            reply = "A" if n < right else "B"
            records.append(record("A", reply, "multiple-choice", str(OPTIONS), f"validation_{subject}_{n + 1}"))
    assert MMMU.score(records, "official")["mmmu/overall"] == 0.41666666666666663
    assert MMMU.score(records, "vlmevalkit")["mmmu/overall"] == 15 / 36 == 0.4166666666666667


def test_unparseable_answers_draw_from_one_stream_in_the_official_order():
    """Seed 42 (official) or 0 (lmms-eval), one draw per unparseable question, subjects alphabetical and then by
    number (Accounting_2 before Accounting_10), whatever order the records come in; a record judged alone gets the
    stream's first draw."""
    options = [f"option {k}" for k in range(8)]
    letters = "ABCDEFGH"
    ids = ("validation_Art_2", "validation_Accounting_10", "validation_Art_10", "validation_Accounting_2")
    place = (2, 1, 3, 0)  # each id's place in the official order
    for parser, seed in (("official", 42), ("lmms_eval", 0)):
        stream = random.Random(seed)
        draws = [stream.choice(letters) for _ in ids]
        answers = [draws[k] for k in place]
        # the test can tell the official order from the given order and from ids sorted as text
        assert answers != draws and answers != [draws[k] for k in (3, 0, 2, 1)]
        records = [record(a, "no idea", "multiple-choice", str(options), q) for q, a in zip(ids, answers)]
        assert MMMU.score(records, parser)["mmmu/overall"] == 1.0
        assert [MMMU.correct(r, parser) for r in records] == [a == draws[0] for a in answers]


def test_the_predictions_file_checks_mmmus_fields():
    good = record("A", "A", "multiple-choice", str(OPTIONS))
    assert MMMU.record_problem(good) is None
    assert MMMU.record_problem(dict(good, options="[]"))[0] == "options"
    assert MMMU.record_problem(dict(good, category="Cooking"))[0] == "category"
    assert MMMU.record_problem(dict(good, question_type="short-answer"))[0] == "question_type"
    assert set(MMMU.values["category"]) == set(SUBJECTS) and len(SUBJECTS) == 30


def test_the_shapes_files_load_through_the_release_loader_with_answers_from_the_scenes(tmp_path):
    root = generate_shapes(tmp_path, seed=3, n_train=2, n_eval=6)
    items = load_mmmu(root / "mmmu", root / "mmmu" / "images")
    counts = json.loads((root / "manifest.json").read_text())["counts"]
    scenes = [json.loads((root / "scenes.json").read_text())[f"eval_images/eval_{i:05d}.png"] for i in range(6)]
    assert len(items) == counts["mmmu"] and {i["category"] for i in items} == {"Design", "Math"}
    images = [(root / "eval_images" / f"eval_{i:05d}.png").read_bytes() for i in range(6)]
    pairs = [i for i in items if isinstance(i["image_path"], list)]
    assert pairs and all(i["prompt"].count("<image>") == len(i["image_path"]) == 2 for i in pairs)
    for item in pairs:
        first, second = (images.index(Path(p).read_bytes()) for p in item["image_path"])
        assert second == first + 1 and first % 2 == 0
        a, b = scenes[first], scenes[second]
        options = {"A": a, "B": b}
        if item["subfield"] == "count":
            assert len(options[item["answer"]]["objects"]) == max(len(a["objects"]), len(b["objects"]))
        else:
            assert item["question"] == f"Which image has a {options[item['answer']]['background']} background?"
    for item in (i for i in items if i["question_type"] == "open"):
        assert int(item["answer"]) == len(scenes[images.index(Path(item["image_path"]).read_bytes())]["objects"])
        assert "<image>" not in item["prompt"]
    assert {annotate_scope(i)["scope"] for i in items if i["subfield"] == "existence"} == {"local"}
    assert {annotate_scope(i)["scope"] for i in items if i["subfield"] != "existence"} == {"global"}
    right = [dict(i, prediction=i["answer"]) for i in items]
    assert MMMU.score(right, "official")["mmmu/overall"] == 1.0


def example_outputs() -> Path:
    """The MMMU repository's example outputs (not redistributed here), with what the three toolkits' code computes
    from them; see tests/fixtures/README.md."""
    folder = Path(os.environ.get("SINKFLOW_FIXTURES", Path(__file__).resolve().parents[3] / "shared" / "fixtures"))
    folder = folder / "mmmu_example_outputs"
    if not folder.is_dir():
        pytest.skip(f"MMMU example outputs not found at {folder} (tests/fixtures/README.md)")
    return folder


@pytest.mark.parametrize("model", ["llava1.5_13b", "qwen_vl"])
def test_every_score_equals_the_toolkits_on_the_official_example_outputs(model):
    folder = example_outputs() / model
    records = []
    for subject in SUBJECTS:
        for out in json.loads((folder / subject / "output.json").read_text()):
            choice = out["question_type"] == "multiple-choice"
            options = str(list(out["index2ans"].values())) if choice else "[]"
            answer = out["answer"] if isinstance(out["answer"], str) else str(out["answer"])
            records.append(record(answer, out["response"], "multiple-choice" if choice else "open", options, out["id"]))
    expected = json.loads((folder / "expected.json").read_text())
    for parser in ("official", "lmms_eval", "vlmevalkit"):
        assert MMMU.score(records[::-1], parser) == expected[parser], parser
