"""CV-Bench's release layout written from the evaluation scenes (`cvbench/test_2d.jsonl`, `cvbench/test_3d.jsonl`).

2D questions are CV-Bench's own kinds: how many shapes (Count) and where one shape is with respect to another
(Relation, left/right or above/below from the grid cells), their source alternating ADE20K / COCO so that the 2D
score averages two sources. A flat image has no depth, so the 3D tasks are image-plane stand-ins, worded as such
and labelled `source_dataset: "shapes (image-plane proxy)"`: Depth asks which of two shapes is closer to the top of
the image, Distance which of two shapes is closer to a third (grid cells, Euclidean); both count as Omni3D. A
question is asked only when the scene decides it; images are the shared `eval_images/`, named relative to the
dataset root as the release names its `img/` files.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable
from pathlib import Path

from sinkflow.shapes.formats.base import FORMATS, ShapesFormat
from sinkflow.shapes.questions import question_scope
from sinkflow.shapes.scene import MAX_OBJECTS, Obj, Scene

SOURCES_2D = ("ADE20K", "COCO")
PROXY = "shapes (image-plane proxy)"


def release_prompt(question: str, choices: list[str]) -> str:
    """The release's `prompt` field: the question, the choice sentence, then one `(X) choice` line each."""
    return (
        question
        + " Select from the following choices."
        + "".join(f"\n({chr(ord('A') + i)}) {option}" for i, option in enumerate(choices))
    )


def _cell_distance(a: Obj, b: Obj) -> int:
    return (a.row - b.row) ** 2 + (a.col - b.col) ** 2


def _questions(scene: Scene, rng: random.Random) -> list[tuple[str, str, list[str], str]]:
    """(task, question, choices, right choice) for each task the scene decides, in task order."""
    objects = list(scene.objects)
    counts = [str(n) for n in range(1, MAX_OBJECTS + 1)]
    rng.shuffle(counts)
    asked = [("Count", "How many shapes are in the image?", counts, str(len(objects)))]
    if len(objects) >= 2:
        a, b = rng.sample(objects, 2)
        sides = ["left", "right"] if a.col != b.col else ["above", "below"]
        right = sides[0] if (a.col < b.col if a.col != b.col else a.row < b.row) else sides[1]
        rng.shuffle(sides)
        asked.append(("Relation", f"Where is the {a.name} with respect to the {b.name}?", sides, right))
    pairs = [(a, b) for a, b in itertools.permutations(objects, 2) if a.row != b.row]
    if pairs:
        a, b = rng.choice(pairs)
        question = f"Which shape is closer to the top of the image, the {a.name} or the {b.name}?"
        asked.append(("Depth", question, [a.name, b.name], min(a, b, key=lambda o: o.row).name))
    triples = [t for t in itertools.permutations(objects, 3) if _cell_distance(*t[:2]) != _cell_distance(t[0], t[2])]
    if triples:
        anchor, a, b = rng.choice(triples)
        question = f"Which shape is closer to the {anchor.name} in the image, the {a.name} or the {b.name}?"
        nearer = min(a, b, key=lambda o: _cell_distance(anchor, o))
        asked.append(("Distance", question, [a.name, b.name], nearer.name))
    return asked


def write_cvbench(folder: Path, scenes: list[Scene], rng: random.Random, image_name: Callable[[int], str]) -> int:
    """Write `test_2d.jsonl` and `test_3d.jsonl` (a type without questions gets no file); idx counts 2D first."""
    rows: dict[str, list[dict]] = {"2D": [], "3D": []}
    for i, scene in enumerate(scenes):
        for task, question, choices, right in _questions(scene, rng):
            kind = "2D" if task in ("Count", "Relation") else "3D"
            source = SOURCES_2D[len(rows["2D"]) % 2] if kind == "2D" else "Omni3D"
            rows[kind].append(
                {
                    "type": kind,
                    "task": task,
                    "question": question,
                    "choices": choices,
                    "answer": f"({chr(ord('A') + choices.index(right))})",
                    "prompt": release_prompt(question, choices),
                    "filename": f"eval_images/{image_name(i)}",
                    "source": source,
                    "source_dataset": "shapes" if kind == "2D" else PROXY,
                    "source_filename": image_name(i),
                    "target_class": None,
                    "target_size": None,
                    "bbox": None,
                }
            )
    idx = 0
    for kind, lines in rows.items():
        if lines:  # an empty question file would be a loading error
            with open(folder / f"test_{kind.lower()}.jsonl", "w", encoding="utf-8") as f:
                for line in lines:
                    f.write(json.dumps({"idx": idx, **line}) + "\n")
                    idx += 1
    return idx


def cvbench_scope(item: dict) -> str:
    """Counting is a global question, as the other shapes sets count it; relation, depth and distance questions
    are about particular shapes, local as position questions are."""
    return question_scope("count" if item["category"] == "Count" else "position")


FORMATS.register("cvbench", ShapesFormat(folder="cvbench", write=write_cvbench, scope=cvbench_scope))
