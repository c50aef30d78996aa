"""MMMU's release layout written from the evaluation scenes: `mmmu/<Subject>/validation-00000-of-00001.parquet` with
the hub's columns and the images embedded, read back by `load_mmmu` like the real data.

Per image: its background colour and which shape it shows (multiple choice, Design) and how many shapes it has
(open, Math). Per pair of consecutive images, two-image questions: which has more shapes (cited in the question
and again in the options, Math), and which has a given background (cited only in the options, Design). The
`subfield` column holds the question kind, from which the item's scope follows.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from sinkflow.shapes.formats.base import FORMATS, ShapesFormat
from sinkflow.shapes.questions import question_scope
from sinkflow.shapes.scene import ALL_OBJECTS, BACKGROUNDS, Scene

_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("question", pa.string()),
        ("options", pa.string()),
        ("explanation", pa.string()),
        *((f"image_{k}", _IMAGE) for k in range(1, 8)),
        ("img_type", pa.string()),
        ("answer", pa.string()),
        ("topic_difficulty", pa.string()),
        ("question_type", pa.string()),
        ("subfield", pa.string()),
    ]
)


def _choice(question: str, options: list[str], correct: str, kind: str, images: list[int]) -> dict:
    return {
        "question": question,
        "options": options,
        "answer": chr(ord("A") + options.index(correct)),
        "question_type": "multiple-choice",
        "subfield": kind,
        "images": images,
    }


def single_image_questions(i: int, scene: Scene, rng: random.Random) -> dict[str, list[dict]]:
    """The questions about image i alone, by subject."""
    backgrounds = rng.sample(list(BACKGROUNDS), len(BACKGROUNDS))
    shown = rng.choice(scene.objects)
    absent = rng.sample([f"{c} {s}" for c, s in ALL_OBJECTS if not scene.has(c, s)], 3)
    shapes = rng.sample([shown.name, *absent], 4)
    return {
        "Design": [
            _choice("What is the background color of <image 1>?", backgrounds, scene.background, "background", [i]),
            _choice("Which of these shapes is in <image 1>?", shapes, shown.name, "existence", [i]),
        ],
        "Math": [
            {
                "question": "<image 1> How many shapes are there?",
                "options": [],
                "answer": str(len(scene.objects)),
                "question_type": "open",
                "subfield": "count",
                "images": [i],
            },
        ],
    }


def pair_questions(i: int, first: Scene, second: Scene, rng: random.Random) -> dict[str, list[dict]]:
    """The questions comparing images i and i + 1 that the two scenes can answer, by subject."""
    both, out = ["<image 1>", "<image 2>"], {"Design": [], "Math": []}
    counts = (len(first.objects), len(second.objects))
    if counts[0] != counts[1]:
        more = both[counts.index(max(counts))]
        question = "Which image has more shapes, <image 1> or <image 2>?"
        out["Math"].append(_choice(question, both, more, "count", [i, i + 1]))
    if first.background != second.background:
        k = rng.randrange(2)
        background = (first, second)[k].background
        out["Design"].append(
            _choice(f"Which image has a {background} background?", both, both[k], "background", [i, i + 1])
        )
    return out


def write_mmmu(folder: Path, scenes: list[Scene], rng: random.Random, image_name: Callable[[int], str]) -> int:
    """One parquet file per subject that has questions; returns how many questions were written."""
    by_subject: dict[str, list[dict]] = {"Design": [], "Math": []}
    for i, scene in enumerate(scenes):
        for subject, questions in single_image_questions(i, scene, rng).items():
            by_subject[subject] += questions
    for i in range(0, len(scenes) - 1, 2):
        for subject, questions in pair_questions(i, scenes[i], scenes[i + 1], rng).items():
            by_subject[subject] += questions
    images = folder.parent / "eval_images"
    for subject, questions in by_subject.items():
        rows = []
        for n, q in enumerate(questions, start=1):
            cells = [{"bytes": (images / image_name(i)).read_bytes(), "path": image_name(i)} for i in q["images"]]
            rows.append(
                {
                    "id": f"validation_{subject}_{n}",
                    "question": q["question"],
                    "options": str(q["options"]),  # the text of a Python list, as the hub stores it
                    "explanation": "",
                    **{f"image_{k}": cells[k - 1] if k <= len(cells) else None for k in range(1, 8)},
                    "img_type": "['Diagrams']",
                    "answer": q["answer"],
                    "topic_difficulty": "Easy",
                    "question_type": q["question_type"],
                    "subfield": q["subfield"],
                }
            )
        (folder / subject).mkdir()
        pq.write_table(
            pa.Table.from_pylist(rows, schema=SCHEMA), folder / subject / "validation-00000-of-00001.parquet"
        )
    return sum(len(questions) for questions in by_subject.values())


FORMATS.register(
    "mmmu", ShapesFormat(folder="mmmu", write=write_mmmu, scope=lambda item: question_scope(item["subfield"]))
)
