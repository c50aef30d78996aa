"""POPE, MME and MMStar loaders on the real fixture files (tests/fixtures/README.md), and their errors on planted
format faults."""

import json
from collections import Counter
from pathlib import Path

import pytest

from sinkflow.benchmarks.mme import SUBTASKS, load_mme, load_mme_release, load_mme_results
from sinkflow.benchmarks.mmstar import load_mmstar
from sinkflow.benchmarks.open_qa import load_open_qa
from sinkflow.benchmarks.pope import load_pope
from sinkflow.data.errors import DataFormatError

SHORT = "\nAnswer the question using a single word or phrase."
# docs/benchmarks.md#mme-subtasks: questions per subtask.
MME_QUESTIONS = {
    "existence": 60,
    "count": 60,
    "position": 60,
    "color": 60,
    "posters": 294,
    "celebrity": 340,
    "scene": 400,
    "landmark": 400,
    "artwork": 400,
    "OCR": 40,
    "commonsense_reasoning": 140,
    "numerical_calculation": 40,
    "text_translation": 40,
    "code_reasoning": 40,
}


def _raises(loader, *args, where: str, field: str, **kwargs) -> str:
    """Run a loader that must fail; check that the message names `file:line` and the field."""
    with pytest.raises(DataFormatError) as error:
        loader(*args, **kwargs)
    message = str(error.value)
    assert message.startswith(where + ": ") and f": {field}: " in message, message
    return message


def test_real_pope_files_load_as_items(tmp_path, pope_coco):
    items = load_pope(pope_coco, tmp_path)
    counts = Counter((i["category"], i["answer"]) for i in items)
    assert counts == {(c, a): 1500 for c in ("random", "popular", "adversarial") for a in ("yes", "no")}
    assert len({i["id"] for i in items}) == 9000
    first = items[0]
    assert first == {
        "benchmark": "pope",
        "id": "random/1",
        "question_id": 1,
        "category": "random",
        "question": "Is there a snowboard in the image?",
        "answer": "yes",
        "image": "COCO_val2014_000000310196.jpg",
        "image_path": str(tmp_path.resolve() / "COCO_val2014_000000310196.jpg"),
        "prompt": "Is there a snowboard in the image?" + SHORT,
    }
    one = load_pope([pope_coco / "coco_pope_popular.json"], tmp_path)
    assert len(one) == 3000 and {i["category"] for i in one} == {"popular"}


def test_real_mme_templates_and_results_load_with_the_official_counts(tmp_path, mme_fixtures):
    items = load_mme(mme_fixtures / "mme_eval_tool", tmp_path)
    assert Counter(i["category"] for i in items) == MME_QUESTIONS
    assert len({i["id"] for i in items}) == 2374
    assert Counter(i["answer"] for i in items) == {"Yes": 1187, "No": 1187}
    first = items[0]
    assert first["category"] == "existence" and first["answer"] == "Yes"
    assert first["prompt"] == first["question"].removesuffix(" Please answer yes or no.") + SHORT
    # The LaVIN results carry a 4th response column: the same items, each with its response as `prediction`.
    results = load_mme(mme_fixtures / "mme_lavin_results", tmp_path)
    assert [{k: v for k, v in r.items() if k != "prediction"} for r in results] == items
    assert all(isinstance(r["prediction"], str) for r in results) and "prediction" not in items[0]
    assert load_mme_results(mme_fixtures / "mme_lavin_results")[0]["prediction"].startswith("yes")
    with pytest.raises(DataFormatError, match="no 4th \\(model response\\) column"):
        load_mme_results(mme_fixtures / "mme_eval_tool")


def test_mme_images_resolve_in_the_release_layout(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "count.txt").write_text("1.jpg\tQ1? Please answer yes or no.\tYes\n1.jpg\tQ2?\tNo\n")
    (tmp_path / "count" / "images").mkdir(parents=True)
    (tmp_path / "count" / "images" / "1.jpg").write_bytes(b"jpg")
    items = load_mme(tmp_path / "data", tmp_path, check_images=True)
    assert [i["image_path"] for i in items] == [str(tmp_path.resolve() / "count" / "images" / "1.jpg")] * 2
    assert [i["prompt"] for i in items] == ["Q1?" + SHORT, "Q2?" + SHORT]
    assert [i["id"] for i in items] == ["count/1.jpg/0", "count/1.jpg/1"]


MMSTAR_ROWS = [
    {
        "index": 0,
        "question": "Which option describes the object relationship in the image correctly?\nOptions: "
        "A: The suitcase is on the book., B: The suitcase is beneath the cat., C: The suitcase is beneath the bed., "
        "D: The suitcase is beneath the book.",
        "image": "0.jpg",
        "answer": "A",
        "category": "coarse perception",
        "l2_category": "image scene and topic",
        "meta_info": {"source": "x"},
    },
    {
        "index": 1,
        "question": "What is the voltage?\nOptions: A: 1V, B: 2V, C: 3V, D: 4V",
        "image": "1.jpg",
        "answer": "D",
        "category": "science & technology",
        "l2_category": "electronics & energy & mechanical eng.",
    },
]


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_mmstar_rows_load_as_items(tmp_path):
    items = load_mmstar(_jsonl(tmp_path / "mmstar.jsonl", MMSTAR_ROWS), tmp_path)
    assert [i["id"] for i in items] == ["0", "1"]
    assert items[1] == {
        "benchmark": "mmstar",
        "id": "1",
        "index": 1,
        "category": "science & technology",
        "l2_category": "electronics & energy & mechanical eng.",
        "question": MMSTAR_ROWS[1]["question"],
        "answer": "D",
        "image": "1.jpg",
        "image_path": str(tmp_path.resolve() / "1.jpg"),
        "prompt": MMSTAR_ROWS[1]["question"] + "\nAnswer with the option's letter from the given choices directly.",
    }


POPE_LINE = {"question_id": 1, "image": "a.jpg", "text": "Is there a cat in the image?", "label": "yes"}


@pytest.mark.parametrize(
    ("second", "field"),
    [
        ({**POPE_LINE, "question_id": 2, "label": "Yes"}, "label"),
        ({k: v for k, v in POPE_LINE.items() if k != "text"} | {"question_id": 2}, "text"),
        ({**POPE_LINE, "question_id": "2"}, "question_id"),
        (POPE_LINE, "question_id"),  # duplicate
        ('{"question_id": 2,', "<line>"),
    ],
)
def test_pope_errors_name_file_line_and_field(tmp_path, second, field):
    path = _jsonl(tmp_path / "x_pope_random.json", [POPE_LINE, second])
    _raises(load_pope, path, tmp_path, where=f"{path}:2", field=field)


def test_pope_missing_image_and_bad_file_name(tmp_path):
    path = _jsonl(tmp_path / "x_pope_random.json", [POPE_LINE])
    _raises(load_pope, path, tmp_path, check_images=True, where=f"{path}:1", field="image")
    (tmp_path / "a.jpg").write_bytes(b"jpg")
    assert load_pope(path, tmp_path, check_images=True)[0]["image_path"] == str(tmp_path.resolve() / "a.jpg")
    odd = _jsonl(tmp_path / "x_pope_hard.json", [POPE_LINE])
    _raises(load_pope, [odd], tmp_path, where=str(odd), field="<file name>")


@pytest.mark.parametrize(
    ("lines", "line", "field"),
    [
        (["a.jpg\tQ?\tYes", "a.jpg\tQ?"], 2, "<line>"),
        (["a.jpg\tQ?\tYes", "b.jpg\tQ?\tNo"], 2, "image"),
        (["a.jpg\tQ?\tYes", "a.jpg\tQ?\tNo", "c.jpg\tQ?\tyes", "c.jpg\tQ?\tNo"], 3, "answer"),
        (["a.jpg\tQ?\tYes", "a.jpg\tQ?\tNo", "c.jpg\tQ?\tYes"], 3, "image"),
        (["a.jpg\tQ?\tYes", "a.jpg\tQ?\tNo", "a.jpg\tQ?\tYes", "a.jpg\tQ?\tNo"], 3, "image"),
    ],
)
def test_mme_errors_name_file_line_and_field(tmp_path, lines, line, field):
    path = tmp_path / "color.txt"
    path.write_text("\n".join(lines) + "\n")
    _raises(load_mme, tmp_path, tmp_path, where=f"{path}:{line}", field=field)


def test_mme_rejects_unknown_subtask_files(tmp_path):
    path = tmp_path / "Color.txt"
    path.write_text("a.jpg\tQ?\tYes\na.jpg\tQ?\tNo\n")
    message = _raises(load_mme, tmp_path, tmp_path, where=str(path), field="<file name>")
    assert all(name in message for name in SUBTASKS)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"answer": "E"}, "answer"),
        ({"category": "Math"}, "category"),
        ({"l2_category": "geometry"}, "l2_category"),
        ({"index": 0}, "index"),
        ({"question": None}, "question"),
    ],
)
def test_mmstar_errors_name_file_line_and_field(tmp_path, change, field):
    path = _jsonl(tmp_path / "mmstar.jsonl", [MMSTAR_ROWS[0], {**MMSTAR_ROWS[1], **change}])
    _raises(load_mmstar, path, tmp_path, where=f"{path}:2", field=field)


OPEN_LINE = {
    "question_id": 0,
    "image": "a.jpg",
    "question": "What is the background color?",
    "answer": "white",
    "category": "background",
}


def test_open_questions_load_with_the_short_answer_prompt(tmp_path):
    items = load_open_qa(_jsonl(tmp_path / "open.jsonl", [OPEN_LINE, {**OPEN_LINE, "question_id": 7}]), tmp_path)
    assert [i["id"] for i in items] == ["0", "7"]
    assert items[0]["prompt"] == "What is the background color?\nAnswer the question using a single word or phrase."
    assert items[0]["benchmark"] == "open" and items[0]["answer"] == "white" and items[0]["category"] == "background"
    assert items[0]["image_path"] == str(tmp_path.resolve() / "a.jpg")


@pytest.mark.parametrize(
    ("second", "field"),
    [
        (OPEN_LINE, "question_id"),  # duplicate
        ({**OPEN_LINE, "question_id": 1, "answer": " "}, "answer"),
        ({k: v for k, v in OPEN_LINE.items() if k != "category"} | {"question_id": 1}, "category"),
        ({**OPEN_LINE, "question_id": 1, "question": 3}, "question"),
    ],
)
def test_open_question_errors_name_file_line_and_field(tmp_path, second, field):
    path = _jsonl(tmp_path / "open.jsonl", [OPEN_LINE, second])
    _raises(load_open_qa, path, tmp_path, where=f"{path}:2", field=field)


def test_mme_release_folders_load_like_the_eval_tool_layout(tmp_path):
    release = tmp_path / "MME_Benchmark_release_version"
    pairs = {
        "artwork": {"10002": ("Is this artwork by Vermeer?", "Is this artwork by Monet?")},
        "count": {"000000006040": ("Is there a train?", "Are there two trains?")},
    }
    tool = tmp_path / "eval_tool"
    tool.mkdir()
    for subtask, images in pairs.items():
        nested = subtask == "artwork"  # images/ + questions_answers_YN/; count is flat
        qa_dir = release / subtask / ("questions_answers_YN" if nested else "")
        img_dir = release / subtask / ("images" if nested else "")
        qa_dir.mkdir(parents=True, exist_ok=True)
        img_dir.mkdir(parents=True, exist_ok=True)
        lines = []
        for stem, (yes_q, no_q) in images.items():
            (img_dir / f"{stem}.jpg").write_bytes(b"jpg")
            (qa_dir / f"{stem}.txt").write_text(
                f"{yes_q} Please answer yes or no.\tYes\n{no_q} Please answer yes or no.\tNo\n"
            )
            lines += [
                f"{stem}.jpg\t{yes_q} Please answer yes or no.\tYes\n",
                f"{stem}.jpg\t{no_q} Please answer yes or no.\tNo\n",
            ]
        (tool / f"{subtask}.txt").write_text("".join(lines))
    items = load_mme_release(release, check_images=True)
    assert items == load_mme(tool, release, check_images=True)
    assert [i["id"] for i in items] == [
        "count/000000006040.jpg/0",
        "count/000000006040.jpg/1",
        "artwork/10002.jpg/0",
        "artwork/10002.jpg/1",
    ]
    (release / "count" / "000000006040.jpg").unlink()
    with pytest.raises(DataFormatError, match="000000006040.txt: image: expected 000000006040.jpg or .png"):
        load_mme_release(release)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# loader name -> (the question file left empty, the load); each folder also holds a valid file where the layout
# has several, so that the empty one cannot hide behind the others' questions.
EMPTY_CASES = {
    "pope": ("x_pope_popular.json", lambda d: load_pope(d, d)),
    "mme": ("color.txt", lambda d: load_mme(d, d)),
    "mme_release": ("color/0002.txt", lambda d: load_mme_release(d)),
    "mmstar": ("mmstar.jsonl", lambda d: load_mmstar(d / "mmstar.jsonl", d)),
    "open": ("open.jsonl", lambda d: load_open_qa(d / "open.jsonl", d)),
}


@pytest.mark.parametrize("content", ["", "\n \n\t\n"], ids=["empty", "blank"])
@pytest.mark.parametrize("loader", EMPTY_CASES)
def test_a_question_file_without_questions_is_an_error(tmp_path, loader, content):
    _jsonl(tmp_path / "x_pope_random.json", [POPE_LINE])
    _write(tmp_path / "count.txt", "a.jpg\tQ?\tYes\na.jpg\tQ?\tNo\n")
    _write(tmp_path / "color" / "0001.txt", "Q?\tYes\nQ?\tNo\n")
    for image in ("0001.jpg", "0002.jpg"):
        _write(tmp_path / "color" / image, "jpg")
    name, load = EMPTY_CASES[loader]
    empty = _write(tmp_path / name, content)
    with pytest.raises(DataFormatError) as error:
        load(tmp_path)
    assert str(error.value) == f"{empty}: <file>: no questions: the file holds none"


def test_a_byte_that_is_not_utf8_is_named_by_its_line_and_a_bom_is_dropped(tmp_path):
    path = tmp_path / "open.jsonl"
    path.write_bytes(json.dumps(OPEN_LINE).encode() + b"\n" + json.dumps(OPEN_LINE).encode()[:-2] + b"\xe9}\n")
    message = _raises(load_open_qa, path, tmp_path, where=f"{path}:2", field="<encoding>")
    assert message.endswith("expected UTF-8 text, got byte 0xe9 at column 125")
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(OPEN_LINE).encode() + b"\n")
    assert [i["id"] for i in load_open_qa(path, tmp_path)] == ["0"]
