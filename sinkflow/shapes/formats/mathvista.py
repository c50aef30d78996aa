"""MathVista questions about the shapes scenes, written as the release's `testmini.json` (pid -> problem): free-form
counts (some with a unit) and colour fractions (precision 1 or 2), and multiple-choice background and dominant
colour questions. Every one asks about the whole image, so every item's scope is global."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

from sinkflow.shapes.formats.base import FORMATS, ShapesFormat
from sinkflow.shapes.scene import BACKGROUNDS, SHAPE_COLORS, Scene


def _problem(question: str, answer: str, answer_type: str, skills: list[str], task: str, **extra) -> dict:
    """A problem with the release's fields; `extra` sets choices, unit or precision."""
    multi = "choices" in extra
    return {
        "question": question,
        "choices": extra.get("choices"),
        "unit": extra.get("unit"),
        "precision": extra.get("precision"),
        "answer": answer,
        "question_type": "multi_choice" if multi else "free_form",
        "answer_type": answer_type,
        "metadata": {
            "split": "testmini",
            "language": "english",
            "source": "shapes",
            "category": "math-targeted-vqa" if answer_type == "float" else "general-vqa",
            "task": task,
            "context": "synthetic scene",
            "grade": "elementary school",
            "skills": skills,
        },
    }


def _options(correct: str, palette: list[str], rng: random.Random) -> list[str]:
    options = [correct, *rng.sample([c for c in palette if c != correct], 3)]
    rng.shuffle(options)
    return options


def scene_problems(scene: Scene, rng: random.Random) -> list[dict]:
    """The problems one scene supports: a count, a colour count in shapes, a colour fraction, the background and,
    when there is one, the dominant colour."""
    n, color = len(scene.objects), scene.objects[0].color
    k = sum(o.color == color for o in scene.objects)
    precision = rng.choice((1, 2))
    counting = ["arithmetic reasoning"]
    problems = [
        _problem("How many shapes are there?", str(n), "integer", counting, "visual question answering"),
        _problem(
            f"How many {color} shapes are there?",
            str(k),
            "integer",
            counting,
            "visual question answering",
            unit="shapes",
        ),
        _problem(
            f"What fraction of the shapes are {color}?",
            str(round(k / n, precision)),  # the official normalisation of a right answer gives exactly this text
            "float",
            ["arithmetic reasoning", "statistical reasoning"],
            "math word problem",
            precision=precision,
        ),
        _problem(
            "What is the background color?",
            scene.background,
            "text",
            ["logical reasoning"],
            "figure question answering",
            choices=_options(scene.background, list(BACKGROUNDS), rng),
        ),
    ]
    if scene.dominant_color:
        problems.append(
            _problem(
                "Which color do most of the shapes have?",
                scene.dominant_color,
                "text",
                ["statistical reasoning"],
                "figure question answering",
                choices=_options(scene.dominant_color, list(SHAPE_COLORS), rng),
            )
        )
    return problems


def write_mathvista(folder: Path, scenes: list[Scene], rng: random.Random, image_name: Callable[[int], str]) -> int:
    """`testmini.json` under `folder`, pids from 1, images named as under `eval_images/`."""
    problems = {}
    for i, scene in enumerate(scenes):
        for problem in scene_problems(scene, rng):
            pid = str(len(problems) + 1)
            problems[pid] = {**problem, "image": image_name(i), "pid": pid}
    (folder / "testmini.json").write_text(json.dumps(problems, indent=2) + "\n", encoding="utf-8")
    return len(problems)


def _global(item: dict) -> str:
    """Counts, fractions, background and dominant colour are all global questions."""
    return "global"


FORMATS.register("mathvista", ShapesFormat(folder="mathvista", write=write_mathvista, scope=_global))
