"""Writing a shapes dataset: one random stream per part (so changing n_train leaves the evaluation sets unchanged,
and vice versa), the official file formats, and the manifest that lets a finished dataset be reused."""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from sinkflow.benchmarks.mme import YES_NO_SUFFIX
from sinkflow.benchmarks.pope import CATEGORIES as POPE_CATEGORIES
from sinkflow.checks import number
from sinkflow.data.collate import first_question
from sinkflow.shapes.captions import CAPTION_PROMPT, caption
from sinkflow.shapes.formats.base import FORMATS
from sinkflow.shapes.questions import (
    GLOBAL_KINDS,
    IMAGE_TYPE,
    LOCAL_KINDS,
    MME_SUBTASK_KINDS,
    MMSTAR_CATEGORIES,
    Asked,
    Question,
    balanced_yes,
    mme_questions,
    mmstar_questions,
    open_questions,
    pope_questions,
    question_scope,
    train_questions,
)
from sinkflow.shapes.render import render_scene
from sinkflow.shapes.scene import BACKGROUNDS, SHAPE_COLORS, SHAPES, Scene, sample_scene

VERSION = 3  # bump when the generated content changes, so cached datasets are regenerated
_BUILT_IN = ("images", "eval_images", "pope", "mme", "mmstar", "open", "train.json", "scenes.json", "manifest.json")


@dataclass(frozen=True)
class ShapesData:
    """A shapes dataset before it is written: the scenes, each training image's turns, and each evaluation file's
    questions (by POPE category and MME subtask)."""

    train_scenes: list[Scene]
    eval_scenes: list[Scene]
    train: list[list[Question]]
    pope: dict[str, list[Asked]]
    mme: dict[str, list[Asked]]
    mmstar: list[Asked]
    open: list[Asked]


def build_shapes(*, seed: int, n_train: int, n_eval: int, image_size: int, turns_per_image: int) -> ShapesData:
    """Every scene and question of the dataset `generate_shapes` writes for these parameters."""

    def stream(name: str) -> random.Random:
        return random.Random(f"shapes/{seed}/{name}")

    train_rng, eval_rng = stream("train_scenes"), stream("eval_scenes")
    train_scenes = [sample_scene(train_rng, image_size) for _ in range(n_train)]
    eval_scenes = [sample_scene(eval_rng, image_size) for _ in range(n_eval)]
    turns_rng = stream("train_turns")
    yes = balanced_yes(turns_rng)
    return ShapesData(
        train_scenes,
        eval_scenes,
        train=[train_questions(scene, turns_rng, turns_per_image, yes) for scene in train_scenes],
        pope={c: pope_questions(c, eval_scenes, stream(f"pope_{c}")) for c in POPE_CATEGORIES},
        mme={s: mme_questions(s, eval_scenes, stream(f"mme_{s}")) for s in MME_SUBTASK_KINDS},
        mmstar=mmstar_questions(eval_scenes, stream("mmstar")),
        open=open_questions(eval_scenes, stream("open")),
    )


def _eval_image(index: int) -> str:
    return f"eval_{index:05d}.png"


def _train_record(index: int, questions: list[Question]) -> dict:
    """One LLaVA-format record: the image, then its turns (the placeholder before the first question)."""
    conversations = []
    for t, question in enumerate(questions):
        conversations += [
            {"from": "human", "value": ("<image>\n" if t == 0 else "") + question.text},
            {"from": "gpt", "value": question.answer},
        ]
    return {"id": f"shapes_train_{index:05d}", "image": f"images/train_{index:05d}.png", "conversations": conversations}


def _routing_record(index: int, record: dict, first: Question, image_prompt: str, question_prompt: str) -> dict:
    """A routing question about a training image (alternately its type and its first question's scope), asked as
    cot_route asks it: about the question the collator gives the strategy."""
    if index % 2:
        prompt, answer = image_prompt, IMAGE_TYPE
    else:
        prompt, answer = question_prompt.replace("{question}", first_question(record["conversations"])), first.scope
    return {
        "id": f"{record['id']}_routing",
        "image": record["image"],
        "conversations": [{"from": "human", "value": f"<image>\n{prompt}"}, {"from": "gpt", "value": answer}],
    }


def _caption_record(record: dict, scene: Scene) -> dict:
    """A one-turn caption of a training image (LLaVA's stage-1 form)."""
    return {
        "id": f"{record['id']}_caption",
        "image": record["image"],
        "conversations": [
            {"from": "human", "value": f"<image>\n{CAPTION_PROMPT}"},
            {"from": "gpt", "value": caption(scene)},
        ],
    }


def _write_json(path: Path, obj: dict | list) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def _write_jsonl(path: Path, lines: list[dict]) -> None:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")


def _write_images(folder: Path, prefix: str, scenes: list[Scene], image_size: int) -> None:
    folder.mkdir(parents=True)
    for i, scene in enumerate(scenes):
        render_scene(scene, image_size).save(folder / f"{prefix}_{i:05d}.png", format="PNG")


def generate_shapes(root: str | Path, **options) -> Path:
    """`write_shapes(root, **options)` under a lock beside `root`: the parallel jobs of a sweep (submitit, SLURM) that
    share a data directory write it once, and the others wait and reuse it (without, each would delete the files
    another is writing)."""
    Path(root).parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{root}.lock"):
        return write_shapes(root, **options)


def write_shapes(
    root: str | Path,
    *,
    seed: int = 0,
    n_train: int = 512,
    n_eval: int = 60,
    image_size: int = 64,
    turns_per_image: int = 2,
    routing_questions: bool = False,
    image_prompt: str | None = None,
    question_prompt: str | None = None,
    captions: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write the shapes dataset under root (reusing it when manifest.json has the same parameters) and return root.

    `routing_questions` adds one single-turn record per training image asking cot_route's routing questions,
    `image_prompt` (the answer: every shapes image is 'symbolic') or `question_prompt` about the image's first
    question (the answer: its scope), so that the tiny model learns to judge, as a real LVLM would zero-shot. The
    prompts are the configured ones (conf/routing/), and are ignored without `routing_questions`.
    `captions` adds one caption record per training image (`sinkflow.shapes.captions`: every shape by colour, kind
    and cell), the dense supervision a model trained from scratch needs to learn what each region shows.
    """
    number("dataset.prepare.n_train", n_train, integer=True, at_least=1)
    number("dataset.prepare.n_eval", n_eval, integer=True, at_least=1)
    number("dataset.prepare.image_size", image_size, integer=True, at_least=24)
    # Every scene supports 4 distinct questions, no more.
    number("dataset.prepare.turns_per_image", turns_per_image, integer=True, at_least=1, at_most=4)
    root = Path(root)
    params = {
        "version": VERSION,
        "seed": seed,
        "n_train": n_train,
        "n_eval": n_eval,
        "image_size": image_size,
        "turns_per_image": turns_per_image,
    }
    if FORMATS.names():  # absent while no format is registered, so that existing datasets stay valid
        params["formats"] = FORMATS.names()
    if routing_questions:  # absent when off, so that existing datasets stay valid
        if image_prompt is None or question_prompt is None or "{question}" not in question_prompt:
            raise ValueError(
                "routing_questions needs `dataset.prepare.image_prompt` and `dataset.prepare."
                "question_prompt` (with '{question}'; conf/routing/), got "
                f"{image_prompt!r} and {question_prompt!r}"
            )
        params.update(routing_questions=True, image_prompt=image_prompt, question_prompt=question_prompt)
    if captions:  # absent when off, so that existing datasets stay valid
        params["captions"] = True
    manifest = root / "manifest.json"
    if not overwrite and manifest.is_file() and json.loads(manifest.read_text("utf-8")).get("params") == params:
        return root
    for name in (*_BUILT_IN, *(fmt.folder for _, fmt in FORMATS.items())):  # only ours: root may hold other files
        path = root / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    root.mkdir(parents=True, exist_ok=True)

    data = build_shapes(
        seed=seed, n_train=n_train, n_eval=n_eval, image_size=image_size, turns_per_image=turns_per_image
    )
    _write_images(root / "images", "train", data.train_scenes, image_size)
    _write_images(root / "eval_images", "eval", data.eval_scenes, image_size)
    records = [_train_record(i, questions) for i, questions in enumerate(data.train)]
    if routing_questions:
        records += [
            _routing_record(i, record, questions[0], image_prompt, question_prompt)
            for i, (record, questions) in enumerate(zip(records, data.train))
        ]
    if captions:
        records += [_caption_record(record, scene) for record, scene in zip(records, data.train_scenes)]
    _write_json(root / "train.json", records)
    _write_json(
        root / "scenes.json",
        {
            **{f"images/train_{i:05d}.png": s.to_json() for i, s in enumerate(data.train_scenes)},
            **{f"eval_images/{_eval_image(i)}": s.to_json() for i, s in enumerate(data.eval_scenes)},
        },
    )

    counts = {
        "train_images": n_train,
        "train_turns": n_train * turns_per_image,
        "eval_images": n_eval,
        "pope": {},
        "mme": {},
    }
    (root / "pope").mkdir()
    for category, asked in data.pope.items():
        _write_jsonl(
            root / "pope" / f"shapes_pope_{category}.json",
            [
                {"question_id": n + 1, "image": _eval_image(i), "text": q.text, "label": q.answer}
                for n, (i, q) in enumerate(asked)
            ],
        )
        counts["pope"][category] = len(asked)
    (root / "mme").mkdir()
    for subtask, asked in data.mme.items():
        if asked:  # a few images may ask no question of a subtask; an empty file would be a loading error
            (root / "mme" / f"{subtask}.txt").write_text(
                "".join(f"{_eval_image(i)}\t{q.text}{YES_NO_SUFFIX}\t{q.answer}\n" for i, q in asked), encoding="utf-8"
            )
            counts["mme"][subtask] = len(asked)
    (root / "mmstar").mkdir()
    _write_jsonl(
        root / "mmstar" / "mmstar.jsonl",
        [
            {
                "index": n,
                "question": q.text,
                "image": _eval_image(i),
                "answer": q.answer,
                "category": MMSTAR_CATEGORIES[q.kind][0],
                "l2_category": MMSTAR_CATEGORIES[q.kind][1],
            }
            for n, (i, q) in enumerate(data.mmstar)
        ],
    )
    counts["mmstar"] = len(data.mmstar)
    (root / "open").mkdir()
    _write_jsonl(
        root / "open" / "open.jsonl",
        [
            {"question_id": n, "image": _eval_image(i), "question": q.text, "answer": q.answer, "category": q.kind}
            for n, (i, q) in enumerate(data.open)
        ],
    )
    counts["open"] = len(data.open)
    for name, fmt in FORMATS.items():
        (root / fmt.folder).mkdir()
        counts[name] = fmt.write(
            root / fmt.folder, data.eval_scenes, random.Random(f"shapes/{seed}/{name}"), _eval_image
        )

    # Written last: a manifest marks a complete dataset.
    _write_json(
        manifest,
        {
            "params": params,
            "counts": counts,
            "scopes": {kind: question_scope(kind) for kind in GLOBAL_KINDS + LOCAL_KINDS},
            "palettes": {"shape_colors": list(SHAPE_COLORS), "backgrounds": list(BACKGROUNDS), "shapes": list(SHAPES)},
        },
    )
    return root
