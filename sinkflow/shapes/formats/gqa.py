"""GQA questions about the shapes evaluation scenes, written in the release's layout
(`gqa/testdev_balanced_questions.json`, question id -> imageId, question, answer, isBalanced, types; the images are
the shared `eval_images/`, so `imageId` is the image's file name without `.png`).

Every image gets a question about the whole scene (the background: semantic type `global`) and two of the local
kinds below that it supports, so that every structural and semantic type is asked; each answer follows from the
scene, and each object a question names is the only one of its kind (colour, shape, or both) in the image.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from sinkflow.shapes.formats.base import FORMATS, ShapesFormat
from sinkflow.shapes.scene import ALL_OBJECTS, BACKGROUNDS, SHAPE_COLORS, Obj, Scene

QUESTIONS_FILE = "testdev_balanced_questions.json"
LOCAL_PER_IMAGE = 2


class GQAQuestion(NamedTuple):
    """A question with its answer and GQA types (`detailed` names the template, in GQA's style)."""

    question: str
    answer: str
    structural: str
    semantic: str
    detailed: str


def _a(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def _yes_no(truth: bool) -> str:
    return "yes" if truth else "no"


def _unique_shapes(scene: Scene) -> list[Obj]:
    """The objects whose shape no other object has (a question can name them by shape alone)."""
    return [o for o in scene.objects if sum(p.shape == o.shape for p in scene.objects) == 1]


def _background(scene: Scene, rng: random.Random) -> GQAQuestion:
    if rng.random() < 0.5:
        return GQAQuestion("What color is the background?", scene.background, "query", "global", "backgroundQuery")
    asked = scene.background if rng.random() < 0.5 else rng.choice([b for b in BACKGROUNDS if b != scene.background])
    truth = _yes_no(asked == scene.background)
    return GQAQuestion(f"Is the background {asked}?", truth, "verify", "global", "backgroundVerify")


def _color(scene: Scene, rng: random.Random) -> GQAQuestion | None:
    named = _unique_shapes(scene)
    if not named:
        return None
    o = rng.choice(named)
    return GQAQuestion(f"What color is the {o.shape}?", o.color, "query", "attr", "queryAttr")


def _choose_color(scene: Scene, rng: random.Random) -> GQAQuestion | None:
    named = _unique_shapes(scene)
    if not named:
        return None
    o = rng.choice(named)
    options = [o.color, rng.choice([c for c in SHAPE_COLORS if c != o.color])]
    rng.shuffle(options)
    return GQAQuestion(f"Is the {o.shape} {options[0]} or {options[1]}?", o.color, "choose", "attr", "chooseAttr")


def _which_shape(scene: Scene, rng: random.Random) -> GQAQuestion | None:
    named = [o for o in scene.objects if sum(p.color == o.color for p in scene.objects) == 1]
    if not named:
        return None
    o = rng.choice(named)
    return GQAQuestion(f"Which shape is {o.color}?", o.shape, "query", "cat", "categoryAttr")


def _exists(scene: Scene, rng: random.Random) -> GQAQuestion:
    if rng.random() < 0.5:
        color, shape = rng.choice([(o.color, o.shape) for o in scene.objects])
    else:
        color, shape = rng.choice([pair for pair in ALL_OBJECTS if not scene.has(*pair)])
    return GQAQuestion(
        f"Is there {_a(f'{color} {shape}')} in the image?", _yes_no(scene.has(color, shape)), "verify", "obj", "exist"
    )


def _left_of(scene: Scene, rng: random.Random) -> GQAQuestion | None:
    pairs = [(a, b) for a in scene.objects for b in scene.objects if a.col != b.col]
    if not pairs:
        return None
    a, b = rng.choice(pairs)  # distinct grid columns: one box lies wholly left of the other
    truth = _yes_no(a.col < b.col)
    return GQAQuestion(f"Is the {a.name} to the left of the {b.name}?", truth, "verify", "rel", "relVerify")


def _both(scene: Scene, rng: random.Random) -> GQAQuestion:
    present = rng.choice(scene.objects)
    also_present = [(o.color, o.shape) for o in scene.objects if o is not present]
    if also_present and rng.random() < 0.5:  # yes about half the time the scene allows
        other = rng.choice(also_present)
    else:
        other = rng.choice([pair for pair in ALL_OBJECTS if not scene.has(*pair)])
    first, second = rng.sample([present.name, f"{other[0]} {other[1]}"], 2)
    truth = _yes_no(scene.has(*other))
    return GQAQuestion(
        f"Are there both {_a(first)} and {_a(second)} in the image?", truth, "logical", "obj", "logicAnd"
    )


def _same_color(scene: Scene, rng: random.Random) -> GQAQuestion | None:
    named = _unique_shapes(scene)
    if len(named) < 2:
        return None
    a, b = rng.sample(named, 2)
    truth = _yes_no(a.color == b.color)
    return GQAQuestion(
        f"Do the {a.shape} and the {b.shape} have the same color?", truth, "compare", "attr", "sameColor"
    )


LOCAL_KINDS: tuple[Callable[[Scene, random.Random], GQAQuestion | None], ...] = (
    _color,
    _choose_color,
    _which_shape,
    _exists,
    _left_of,
    _both,
    _same_color,
)


def gqa_questions(scene: Scene, rng: random.Random) -> list[GQAQuestion]:
    """The background question and `LOCAL_PER_IMAGE` local questions of kinds the scene supports."""
    local = []
    for kind in rng.sample(LOCAL_KINDS, len(LOCAL_KINDS)):
        made = kind(scene, rng)
        if made is not None:
            local.append(made)
        if len(local) == LOCAL_PER_IMAGE:
            break
    return [_background(scene, rng), *local]


def write_gqa(folder: Path, scenes: list[Scene], rng: random.Random, image_name: Callable[[int], str]) -> int:
    """`testdev_balanced_questions.json` for the scenes (question ids are strings, in order); returns its size."""
    questions = {}
    for i, scene in enumerate(scenes):
        for q in gqa_questions(scene, rng):
            questions[str(len(questions))] = {
                "imageId": Path(image_name(i)).stem,
                "question": q.question,
                "answer": q.answer,
                "isBalanced": True,
                "types": {"structural": q.structural, "semantic": q.semantic, "detailed": q.detailed},
            }
    (folder / QUESTIONS_FILE).write_text(json.dumps(questions, indent=1) + "\n", encoding="utf-8")
    return len(questions)


def gqa_scope(item: dict) -> str:
    """`global` exactly for the questions about the whole scene (semantic type `global`), else `local`: the scope
    key `gqa/global/accuracy` then equals the semantic type's."""
    return "global" if item["semantic"] == "global" else "local"


FORMATS.register("gqa", ShapesFormat(folder="gqa", write=write_gqa, scope=gqa_scope))
