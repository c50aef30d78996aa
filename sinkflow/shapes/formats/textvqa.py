"""TextVQA's release layout written from the shapes evaluation scenes: `textvqa/TextVQA_0.5.1_val.json`, questions
whose answers are words and numbers the scene shows, each with ten answers as ten people would type them
(docs/benchmarks.md#textvqa-on-shapes). The images stay in `eval_images/` (`image_extension: .png`)."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

from sinkflow.benchmarks.textvqa import ANSWERS_PER_QUESTION, RELEASE_FILE
from sinkflow.shapes.formats.base import FORMATS, ShapesFormat
from sinkflow.shapes.scene import BACKGROUNDS, MAX_OBJECTS, SHAPE_COLORS, Scene

NUMBER_WORDS = ("zero", "one", "two", "three", "four")  # indexed by a count, at most MAX_OBJECTS
# At most this many of the ten people answer the same wrong thing: the truth always keeps full credit (>= 4 of ten)
# and the wrong answer earns 0, 0.3, 0.6 or 0.9.
MAX_DISAGREEING = 3


def spellings(truth: str) -> tuple[str, ...]:
    """Ways of typing the truth that EvalAI's normalisation makes equal: as is, capitalised with a period, after
    an article, and a count also as its number word ("2", "2.", "the 2", "two", "Two.", "the two")."""
    words = (truth, NUMBER_WORDS[int(truth)]) if truth.isdigit() else (truth,)
    return tuple(spelling for word in words for spelling in (word, word.capitalize() + ".", f"the {word}"))


def _questions(scene: Scene, rng: random.Random) -> list[tuple[str, str, str]]:
    """(question, truth, a wrong answer someone might give) for the background colour, the number of shapes and
    the colour of a shape that appears once (when one does), in the release's lower-case style."""
    n = len(scene.objects)
    asked = [
        (
            "what color is the background?",
            scene.background,
            rng.choice([b for b in BACKGROUNDS if b != scene.background]),
        ),
        ("how many shapes are there?", str(n), str(rng.choice([m for m in (n - 1, n + 1) if 1 <= m <= MAX_OBJECTS]))),
    ]
    shapes = [o.shape for o in scene.objects]
    single = [o for o in scene.objects if shapes.count(o.shape) == 1]
    if single:
        o = rng.choice(single)
        wrong = rng.choice([c for c in SHAPE_COLORS if c != o.color])
        asked.append((f"what color is the {o.shape}?", o.color, wrong))
    return asked


def _answers(truth: str, wrong: str, rng: random.Random) -> list[str]:
    """Ten answers: 0 to MAX_DISAGREEING people give the same wrong one, the others spell the truth their way."""
    disagreeing = rng.randint(0, MAX_DISAGREEING)
    answers = [wrong] * disagreeing + [rng.choice(spellings(truth)) for _ in range(ANSWERS_PER_QUESTION - disagreeing)]
    rng.shuffle(answers)
    return answers


def write_textvqa(folder: Path, scenes: list[Scene], rng: random.Random, image_name: Callable[[int], str]) -> int:
    """The release's JSON (no OCR tokens: the images show no text), one entry per question; returns how many."""
    data = []
    for i, scene in enumerate(scenes):
        for question, truth, wrong in _questions(scene, rng):
            entry = {"question_id": len(data), "question": question, "image_id": Path(image_name(i)).stem}
            data.append(entry | {"answers": _answers(truth, wrong, rng), "ocr_tokens": []})
    release = {"dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1", "data": data}
    (folder / RELEASE_FILE).write_text(json.dumps(release) + "\n", encoding="utf-8")
    return len(data)


FORMATS.register("textvqa", ShapesFormat(folder="textvqa", write=write_textvqa))
