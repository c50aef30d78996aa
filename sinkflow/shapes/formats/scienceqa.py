"""ScienceQA-IMG from the shapes scenes, in the release layout `load_scienceqa` reads: `problems.json`,
`pid_splits.json` and `images/test/<id>/image.png` (a copy of the evaluation image).

One multiple-choice question per scene and kind the scene supports, each kind with its subject and grade (so that
every breakdown the score reports has questions), and a `Context:` hint on about half of them. The question kind is
the problem's `skill`, which gives the item its scope.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path

from sinkflow.benchmarks.scienceqa import SPLIT
from sinkflow.shapes.formats.base import FORMATS, ShapesFormat
from sinkflow.shapes.questions import question_scope
from sinkflow.shapes.scene import BACKGROUNDS, MAX_OBJECTS, SHAPE_COLORS, SHAPES, Scene

# kind -> (subject, grade, category, a hint that explains the question without answering it)
KINDS = {
    "background": (
        "natural science",
        "grade1",
        "Colors",
        "The background is the part of the image behind the shapes.",
    ),
    "count": ("natural science", "grade2", "Counting", "Circles, squares, triangles, diamonds and stars are shapes."),
    "existence": ("language science", "grade3", "Shape words", "Each shape has a name, such as circle or star."),
    "position": ("social science", "grade7", "Reading an image", "The middle column is neither left nor right."),
    "dominant_color": ("natural science", "grade8", "Colors", "Most of the shapes means more than half of them."),
}


def _shuffled(rng: random.Random, answer: str, others: list[str]) -> tuple[list[str], int]:
    """The answer among the other choices in random order, and its index."""
    choices = [answer, *others]
    rng.shuffle(choices)
    return choices, choices.index(answer)


def _question(kind: str, scene: Scene, rng: random.Random) -> tuple[str, list[str], int] | None:
    """(question, choices, answer index) of one kind, or None when the scene cannot support it."""
    if kind == "background":
        others = rng.sample([b for b in BACKGROUNDS if b != scene.background], 2)
        return ("Which color is the background of the image?", *_shuffled(rng, scene.background, others))
    if kind == "count":
        return "How many shapes are in the image?", [str(n) for n in range(1, MAX_OBJECTS + 1)], len(scene.objects) - 1
    if kind == "existence":  # at most 4 objects of 5 kinds: one kind is always absent
        absent = [s for s in SHAPES if not any(o.shape == s for o in scene.objects)]
        others = rng.sample(absent, min(len(absent), rng.randint(1, 3)))
        return ("Which word names a shape in the image?", *_shuffled(rng, rng.choice(scene.objects).shape, others))
    if kind == "position":
        sided = [o for o in scene.objects if o.side]
        if not sided:
            return None
        o = rng.choice(sided)
        return f"Which side of the image is the {o.name} on?", ["left", "right"], int(o.side == "right")
    dominant = scene.dominant_color
    if dominant is None:
        return None
    others = rng.sample([c for c in SHAPE_COLORS if c != dominant], 3)
    return ("Which color do most of the shapes have?", *_shuffled(rng, dominant, others))


def write_scienceqa(folder: Path, scenes: list[Scene], rng: random.Random, image_name: Callable[[int], str]) -> int:
    """Write the release files for every question the scenes support; return how many."""
    problems = {}
    for i, scene in enumerate(scenes):
        for kind, (subject, grade, category, hint) in KINDS.items():
            made = _question(kind, scene, rng)
            if made is None:
                continue
            pid = str(len(problems) + 1)
            question, choices, answer = made
            problems[pid] = {
                "question": question,
                "choices": choices,
                "answer": answer,
                "hint": hint if rng.random() < 0.5 else "",
                "image": "image.png",
                "task": "closed choice",
                "grade": grade,
                "subject": subject,
                "topic": "shapes",
                "category": category,
                "skill": kind,
                "lecture": "",
                "solution": "",
                "split": SPLIT,
            }
            target = folder / "images" / SPLIT / pid / "image.png"
            target.parent.mkdir(parents=True)
            shutil.copyfile(folder.parent / "eval_images" / image_name(i), target)
    (folder / "problems.json").write_text(json.dumps(problems, indent=2) + "\n", encoding="utf-8")
    splits = {"train": [], "val": [], SPLIT: list(problems)}
    (folder / "pid_splits.json").write_text(json.dumps(splits, indent=2) + "\n", encoding="utf-8")
    return len(problems)


FORMATS.register(
    "scienceqa_img",
    ShapesFormat(folder="scienceqa", write=write_scienceqa, scope=lambda item: question_scope(item["skill"])),
)
