"""GQA: both layouts load to the same items, bad questions are named, the three answer rules and the official
accuracies on worked examples (docs/benchmarks.md#gqa), and the shapes questions load and answer from the scene."""

import io
import json
import random
import string

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from sinkflow.benchmarks.gqa import GQA, gqa_correct, load_gqa, load_gqa_hf
from sinkflow.data.errors import DataFormatError
from sinkflow.data.predictions import read_predictions
from sinkflow.eval.metrics import score_records
from sinkflow.shapes import annotate_scope, generate_shapes
from sinkflow.shapes.formats.gqa import QUESTIONS_FILE, gqa_questions
from sinkflow.shapes.scene import sample_scene

SUFFIX = "\nAnswer the question using a single word or phrase."


def question(image_id, text, answer, structural, semantic, detailed="x", **extra):
    return {
        "imageId": image_id,
        "question": text,
        "answer": answer,
        "fullAnswer": f"It is {answer}.",
        "isBalanced": True,
        "types": {"structural": structural, "semantic": semantic, "detailed": detailed},
        **extra,
    }


QUESTIONS = {
    "201307251": question("n161313", "Is it overcast?", "no", "verify", "global", "weatherVerify"),
    "20515553": question("n235859", "What color is the cup?", "white", "query", "attr", "queryAttr"),
    "1914": question("n161313", "Is the cup to the left of the bowl?", "yes", "verify", "rel", isBalanced=False),
}


def write_questions(folder, questions) -> str:
    path = folder / "testdev_balanced_questions.json"
    path.write_text(json.dumps(questions))
    return path


def test_the_release_file_loads_balanced_questions_in_order(tmp_path):
    items = load_gqa(write_questions(tmp_path, QUESTIONS), tmp_path / "images")
    assert [i["id"] for i in items] == ["201307251", "20515553"]  # the unbalanced one is not scored
    assert items[1] == {
        "benchmark": "gqa",
        "id": "20515553",
        "image_id": "n235859",
        "question": "What color is the cup?",
        "answer": "white",
        "structural": "query",
        "semantic": "attr",
        "detailed": "queryAttr",
        "image": "n235859.jpg",
        "image_path": str((tmp_path / "images" / "n235859.jpg").resolve()),
        "prompt": "What color is the cup?" + SUFFIX,
    }
    with pytest.raises(DataFormatError, match=r"json:question 201307251: image: expected an image file at .*n161313"):
        load_gqa(tmp_path / "testdev_balanced_questions.json", tmp_path / "images", check_images=True)


def jpeg(color) -> dict:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="JPEG")
    return {"bytes": buffer.getvalue(), "path": None}


def write_hf(tmp_path, questions, image_ids):
    """The two lmms-lab/GQA configs as the hub lays them out (one parquet per config folder)."""
    instructions, images = tmp_path / "testdev_balanced_instructions", tmp_path / "testdev_balanced_images"
    instructions.mkdir(exist_ok=True)
    images.mkdir(exist_ok=True)
    rows = [{"id": qid, **{k: v for k, v in q.items() if k != "fullAnswer"}} for qid, q in questions.items()]
    pq.write_table(pa.Table.from_pylist(rows), instructions / "testdev-00000-of-00001.parquet")
    cells = [{"id": image_id, "image": jpeg((40 * n, 0, 0))} for n, image_id in enumerate(image_ids)]
    pq.write_table(pa.Table.from_pylist(cells), images / "testdev-00000-of-00001.parquet")
    return instructions, images


def test_the_hugging_face_configs_join_to_the_release_items(tmp_path):
    instructions, images = write_hf(tmp_path, QUESTIONS, ["n161313", "n235859", "n999"])
    items = load_gqa_hf(instructions, images)
    original = load_gqa(write_questions(tmp_path, QUESTIONS), tmp_path / "testdev_balanced_images_images")
    assert items == original  # written beside the images config, under the release's file names
    assert Image.open(items[1]["image_path"]).size == (8, 8)
    assert sorted(p.name for p in (tmp_path / "testdev_balanced_images_images").iterdir()) == [
        "n161313.jpg",
        "n235859.jpg",
    ]


def test_bad_hugging_face_rows_are_named(tmp_path):
    instructions, images = write_hf(tmp_path, QUESTIONS, ["n161313"])
    with pytest.raises(DataFormatError, match=r"parquet:2: imageId: no image with id 'n235859'"):
        load_gqa_hf(instructions, images)
    rows = [{"id": "7", **question("n161313", "Is it?", "no", "verify", "obj")}] * 2
    pq.write_table(pa.Table.from_pylist(rows), instructions / "testdev-00000-of-00001.parquet")
    with pytest.raises(DataFormatError, match=r"parquet:2: id: duplicate question id '7' \(first at row 1\)"):
        load_gqa_hf(instructions, images)
    pq.write_table(
        pa.Table.from_pylist([{"id": "7", "imageId": "n1", "question": "q", "answer": "a"}]),
        instructions / "testdev-00000-of-00001.parquet",
    )
    with pytest.raises(DataFormatError, match=r"parquet: types: missing column"):
        load_gqa_hf(instructions, images)


@pytest.mark.parametrize(
    "questions, message",
    [
        (
            {"7": {"imageId": "n1", "question": "q", "types": {"structural": "query", "semantic": "obj"}}},
            r"json:question 7: answer: missing",
        ),
        ({"7": question("n1", "q", "a", "count", "obj")}, r"json:question 7: types.structural: expected one of"),
        ({"7": question("n1", "q", "a", "query", "scene")}, r"json:question 7: types.semantic: expected one of"),
        ({"7": question("n1", "q", 3, "query", "obj")}, r"json:question 7: answer: expected str, got 3"),
        ({"7": question("n1", "q", "a", "query", "obj", isBalanced="yes")}, r"json:question 7: isBalanced: expected"),
        ({"7": ["n1", "q"]}, r"json:question 7: <question>: expected an object"),
        ({"7": question("n1", "q", "a", "query", "obj", isBalanced=False)}, r"json: isBalanced: no balanced question"),
        ({}, r"json: <file>: no questions"),
        ([], r"json: <json>: expected an object of questions, got list"),
    ],
)
def test_bad_questions_are_named_by_file_question_and_field(tmp_path, questions, message):
    with pytest.raises(DataFormatError, match=message):
        load_gqa(write_questions(tmp_path, questions), tmp_path)


def test_broken_json_is_named_by_line_and_a_repeated_id_is_an_error(tmp_path):
    path = tmp_path / "q.json"
    path.write_text('{\n"7": {"imageId": "n1",\n')
    with pytest.raises(DataFormatError, match=r"q.json:3: <json>: expected a JSON object"):
        load_gqa(path, tmp_path)
    body = json.dumps(question("n1", "q", "a", "query", "obj"))
    path.write_text(f'{{"7": {body}, "7": {body}}}')
    with pytest.raises(DataFormatError, match=r"q.json: <json>: key '7' appears twice"):
        load_gqa(path, tmp_path)
    with pytest.raises(FileNotFoundError, match="testdev_balanced_questions.json"):
        load_gqa(tmp_path / "missing.json", tmp_path)


# (answer, prediction, right under official, lmms_eval, vlmevalkit)
WORKED = [
    ("yes", "Yes", True, True, True),
    ("yes", "Yes.", True, True, False),
    ("no", "no..", True, True, False),
    ("yes", " YES. ", True, True, False),
    ("yes", "Yes!", False, True, False),
    ("white", '"white"', False, True, False),
    ("t-shirt", "T-shirt.", True, True, False),
    ("t-shirt", "tshirt", False, True, False),
    ("dining table", "Dining Table", True, True, True),
    ("dining table", "dining-table", False, False, False),
    ("yes", "yes .", False, False, False),
    ("yes", "Yes, it is.", False, False, False),
    ("cat", "The cat.", False, False, False),
    ("left", "left side", False, False, False),
    ("yes", "yes\u3002", False, False, False),  # an ideographic full stop is not ASCII punctuation
    ("no", "", False, False, False),
]


@pytest.mark.parametrize("answer, prediction, official, lmms_eval, vlmevalkit", WORKED)
def test_the_three_answer_rules_on_worked_examples(answer, prediction, official, lmms_eval, vlmevalkit):
    assert gqa_correct(prediction, answer, "official") is official
    assert gqa_correct(prediction, answer, "lmms_eval") is lmms_eval
    assert gqa_correct(prediction, answer, "vlmevalkit") is vlmevalkit


def test_lmms_eval_matches_its_numpy_exact_match():
    """lmms-eval's exact_match as its task runs it: the generation stripped, then numpy lower-casing, deletion of
    string.punctuation and element-wise equality."""
    answers = [a for a, *_ in WORKED]
    predictions = [p.strip() for _, p, *_ in WORKED]
    table = string.punctuation.maketrans("", "", string.punctuation)
    expected = np.char.translate(np.char.lower(np.asarray(predictions)), table=table) == np.char.translate(
        np.char.lower(np.asarray(answers)), table=table
    )
    assert [gqa_correct(p, a, "lmms_eval") for a, p, *_ in WORKED] == expected.tolist()


def record(n, structural, semantic, answer, prediction):
    return {
        "benchmark": "gqa",
        "id": str(n),
        "question": "q",
        "answer": answer,
        "prediction": prediction,
        "prompt": "p",
        "structural": structural,
        "semantic": semantic,
    }


RECORDS = [
    record(1, "verify", "rel", "yes", "Yes."),
    record(2, "query", "attr", "red", "red"),
    record(3, "query", "global", "beige", "white"),
    record(4, "choose", "attr", "blue", "Blue!"),
    record(5, "logical", "obj", "no", "no"),
    record(6, "compare", "attr", "yes", "No"),
]


def test_official_accuracies_per_answer_kind_and_type():
    assert GQA.score(RECORDS, "official") == {
        "gqa/overall": 3 / 6,
        "gqa/binary/accuracy": 2 / 4,  # every structural type but query
        "gqa/open/accuracy": 1 / 2,
        "gqa/verify/accuracy": 1.0,
        "gqa/query/accuracy": 1 / 2,
        "gqa/choose/accuracy": 0.0,
        "gqa/logical/accuracy": 1.0,
        "gqa/compare/accuracy": 0.0,
        "gqa/rel/accuracy": 1.0,
        "gqa/attr/accuracy": 1 / 3,
        "gqa/global/accuracy": 0.0,
        "gqa/obj/accuracy": 1.0,
    }
    lmms = GQA.score(RECORDS, "lmms_eval")  # "Blue!" is right once punctuation is ignored
    assert (lmms["gqa/overall"], lmms["gqa/binary/accuracy"], lmms["gqa/attr/accuracy"]) == (4 / 6, 3 / 4, 2 / 3)
    with pytest.raises(ValueError, match=r"GQA record '1': semantic: expected one of"):
        GQA.score([dict(RECORDS[0], semantic="scene")], "official")


def test_a_predictions_file_needs_the_types(tmp_path):
    path = tmp_path / "predictions.jsonl"
    path.write_text(json.dumps({k: v for k, v in RECORDS[0].items() if k != "structural"}) + "\n")
    with pytest.raises(DataFormatError, match=r"predictions.jsonl:1: structural: missing field"):
        read_predictions(path)
    path.write_text(json.dumps(dict(RECORDS[0], semantic="scene")) + "\n")
    with pytest.raises(DataFormatError, match=r"predictions.jsonl:1: semantic: expected one of"):
        read_predictions(path)


def test_shapes_questions_answer_from_the_scene():
    rng, checked = random.Random(3), set()
    for scene in (sample_scene(rng, 48) for _ in range(200)):
        colors = {o.shape: o.color for o in scene.objects}  # the shapes a question names are unique in the scene
        columns = {o.name: o.col for o in scene.objects}
        for q in gqa_questions(scene, rng):
            words = q.question.rstrip("?").split()
            checked.add(q.detailed)
            if q.detailed == "backgroundQuery":
                assert q.answer == scene.background
            elif q.detailed == "backgroundVerify":
                assert q.answer == ("yes" if words[-1] == scene.background else "no")
            elif q.detailed in ("queryAttr", "chooseAttr"):
                assert q.answer == colors[words[4 if q.detailed == "queryAttr" else 2]]
            elif q.detailed == "categoryAttr":
                assert [o.shape for o in scene.objects if o.color == words[-1]] == [q.answer]
            elif q.detailed == "exist":
                assert q.answer == ("yes" if scene.has(words[3], words[4]) else "no")
            elif q.detailed == "logicAnd":
                assert q.answer == ("yes" if scene.has(*words[4:6]) and scene.has(*words[8:10]) else "no")
            elif q.detailed == "relVerify":
                a, b = " ".join(words[2:]).split(" to the left of the ")
                assert q.answer == ("yes" if columns[a] < columns[b] else "no")
            else:
                assert q.detailed == "sameColor"
                assert q.answer == ("yes" if colors[words[2]] == colors[words[5]] else "no")
    assert len(checked) == 9


def test_the_shapes_format_loads_through_the_release_loader(tmp_path):
    root = generate_shapes(tmp_path / "shapes", seed=0, n_train=2, n_eval=24, image_size=24)
    items = load_gqa(root / "gqa" / QUESTIONS_FILE, root / "eval_images", check_images=True, image_ext=".png")
    assert len(items) == 3 * 24 == json.loads((root / "manifest.json").read_text())["counts"]["gqa"]
    assert {i["structural"] for i in items} == {"verify", "query", "choose", "logical", "compare"}
    assert {i["semantic"] for i in items} == {"obj", "attr", "rel", "cat", "global"}
    records = [
        dict(i, **annotate_scope(i), prediction=i["answer"] if n % 2 else "no idea") for n, i in enumerate(items)
    ]
    assert {r["scope"] for r in records if r["semantic"] == "global"} == {"global"}
    assert {r["scope"] for r in records if r["semantic"] != "global"} == {"local"}
    scores = score_records(records)
    by_semantic = GQA.score(records, "official")["gqa/global/accuracy"]
    # The scope key and the semantic type's key are one number: the same questions.
    assert scores["gqa/global/accuracy"] == by_semantic
    assert scores["gqa/overall"] == sum(r["prediction"] == r["answer"] for r in records) / len(records)
