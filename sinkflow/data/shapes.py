"""Deterministic synthetic "shapes" data: LLaVA-format training data; POPE / MME / MMStar-format and open
evaluation sets."""
from __future__ import annotations

import json
import math
import random
import re
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from sinkflow.data.benchmarks.common import SHORT_ANSWER, short_answer_prompt
from sinkflow.data.benchmarks.mme import YES_NO_SUFFIX
from sinkflow.data.benchmarks.mmstar import LETTER_ANSWER, LETTERS, letter_prompt
from sinkflow.data.collate import first_question
from sinkflow.sinks.strategies.cot_route import IMAGE_PROMPT, QUESTION_PROMPT

SHAPE_COLORS = {
    "red": (220, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 90, 220),
    "yellow": (240, 210, 50),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
}
BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0), "gray": (128, 128, 128), "beige": (225, 205, 165)}
SHAPES = ("circle", "square", "triangle", "diamond", "star")
ALL_OBJECTS = tuple((c, s) for c in SHAPE_COLORS for s in SHAPES)
GLOBAL_KINDS = ("background", "dominant_color", "count")
LOCAL_KINDS = ("existence", "position")
CORNERS = ("top left", "top right", "bottom left", "bottom right")
GRID = 3  # objects sit in distinct cells of a 3x3 grid: no overlap, and the middle column is neither left nor right
MAX_OBJECTS = 4
VERSION = 3  # bump when the generated content changes, so cached datasets are regenerated
POPE_CATEGORIES = ("random", "popular", "adversarial")
MME_SUBTASKS = ("existence", "count", "position", "color")
MMSTAR_CATEGORIES = {
    "background": ("coarse perception", "image scene and topic"),
    "count": ("fine-grained perception", "object counting"),
    "existence": ("fine-grained perception", "recognition"),
    "position": ("fine-grained perception", "localization"),
}
# Training prompt styles, one per evaluation format: open short answer, MME/POPE yes/no verification, MMStar
# multiple choice. Existence has no open style: its open question is already the POPE verification question.
TRAIN_STYLES = ("open", "verify", "choice")
_STYLE_KINDS = {
    "open": ("background", "dominant_color", "count", "position"),
    "verify": GLOBAL_KINDS + LOCAL_KINDS,
    "choice": tuple(MMSTAR_CATEGORIES),
}
_EVAL_SCOPES = {
    **{("pope", c): "local" for c in POPE_CATEGORIES},
    ("mme", "existence"): "local",
    ("mme", "position"): "local",
    ("mme", "count"): "global",
    ("mme", "color"): "global",
    **{("mmstar", l2): "global" if kind in GLOBAL_KINDS else "local" for kind, (_, l2) in MMSTAR_CATEGORIES.items()},
    **{("open", kind): "global" if kind in GLOBAL_KINDS else "local" for kind in _STYLE_KINDS["open"]},
}
_QUESTION_KINDS = (
    ("background", r"What is the background color\?|Is the background \w+\?"),
    ("dominant_color", r"What is the dominant color of the shapes\?|Is the dominant color of the shapes \w+\?"),
    ("count", r"How many shapes are there\?|Are there \d+ shapes in the image\?|Is there 1 shape in the image\?"),
    ("existence", r"Is there an? \w+ \w+ in the image\?|Which of these shapes is in the image\?"),
    ("position", r"Is the \w+ \w+ on the (left or the right|left of the image|right of the image)\?"
                 r"|Where is the \w+ \w+\?"),
)
_OUTPUTS = ("images", "eval_images", "pope", "mme", "mmstar", "open", "train.json", "scenes.json", "manifest.json")


def question_scope(kind: str) -> str:
    """'global' or 'local' for a question kind."""
    if kind in GLOBAL_KINDS:
        return "global"
    if kind in LOCAL_KINDS:
        return "local"
    raise ValueError(f"unknown question kind {kind!r}; expected one of {GLOBAL_KINDS + LOCAL_KINDS}")


def scope_of(benchmark: str, category: str, l2_category: str | None = None) -> str:
    """'global' or 'local' for a shapes evaluation item, from its benchmark, category and (MMStar) l2 category."""
    key = (benchmark, l2_category if benchmark == "mmstar" else category)
    if key not in _EVAL_SCOPES:
        raise ValueError(f"no shapes scope for benchmark={benchmark!r} category={category!r} "
                         f"l2_category={l2_category!r}")
    return _EVAL_SCOPES[key]



def annotate_scope(item: dict) -> dict:
    """Extra metadata for an evaluation item: its `scope` (global / local), scored separately."""
    return {"scope": scope_of(item["benchmark"], item["category"], item.get("l2_category"))}

def question_kind(question: str) -> str:
    """The kind of any shapes question (training prompt, POPE / MME / MMStar text or loader prompt)."""
    text = question.removeprefix("<image>\n")
    for suffix in (SHORT_ANSWER, LETTER_ANSWER, YES_NO_SUFFIX):
        text = text.removesuffix(suffix)
    text = text.split("\nOptions:")[0]
    for kind, pattern in _QUESTION_KINDS:
        if re.fullmatch(pattern, text):
            return kind
    raise ValueError(f"not a shapes question: {question!r}")


@dataclass(frozen=True)
class Obj:
    """One shape: its kind, colour, grid cell and pixel box (x0, y0, x1, y1)."""

    shape: str
    color: str
    row: int
    col: int
    box: tuple[int, int, int, int]

    @property
    def name(self) -> str:
        """'colour shape', as used in questions."""
        return f"{self.color} {self.shape}"

    @property
    def side(self) -> str | None:
        """'left' or 'right' for the outer grid columns; None in the middle column (ambiguous)."""
        return {0: "left", GRID - 1: "right"}.get(self.col)

    @property
    def corner(self) -> str | None:
        """'top left' etc. for the four corner cells, else None."""
        if self.row in (0, GRID - 1) and self.col in (0, GRID - 1):
            return CORNERS[2 * (self.row > 0) + (self.col > 0)]
        return None


@dataclass(frozen=True)
class Scene:
    """A background colour and 1-4 non-overlapping shapes with distinct (colour, shape) pairs."""

    background: str
    objects: tuple[Obj, ...]

    def has(self, color: str, shape: str) -> bool:
        """Whether the scene contains a shape of this colour and kind."""
        return any(o.color == color and o.shape == shape for o in self.objects)

    @property
    def dominant_color(self) -> str | None:
        """The colour of a strict majority of the shapes, if there is one."""
        color, n = Counter(o.color for o in self.objects).most_common(1)[0]
        return color if 2 * n > len(self.objects) else None

    def to_json(self) -> dict:
        """The scene as a JSON-ready dict (written to scenes.json)."""
        return {"background": self.background, "objects": [
            {"shape": o.shape, "color": o.color, "cell": [o.row, o.col], "box": list(o.box)} for o in self.objects]}



def sample_scene(rng: random.Random, image_size: int) -> Scene:
    """Draw a random scene; shapes favour one colour so that a dominant colour is common."""
    cell = image_size / GRID
    main = rng.choice(list(SHAPE_COLORS))
    objects, used = [], set()
    for index in rng.sample(range(GRID * GRID), rng.randint(1, MAX_OBJECTS)):
        while True:
            color = main if rng.random() < 0.6 else rng.choice(list(SHAPE_COLORS))
            shape = rng.choice(SHAPES)
            if (color, shape) not in used:
                break
        used.add((color, shape))
        row, col = divmod(index, GRID)
        size = rng.uniform(0.55, 0.85) * cell
        margin = 0.08 * cell  # keeps shapes off cell borders, so image corners are always background
        cx = col * cell + rng.uniform(margin + size / 2, cell - margin - size / 2)
        cy = row * cell + rng.uniform(margin + size / 2, cell - margin - size / 2)
        x0, y0 = round(cx - size / 2), round(cy - size / 2)
        objects.append(Obj(shape, color, row, col, (x0, y0, x0 + round(size), y0 + round(size))))
    return Scene(rng.choice(list(BACKGROUNDS)), tuple(objects))


def render_scene(scene: Scene, image_size: int) -> Image.Image:
    """Draw a scene as an RGB image."""
    image = Image.new("RGB", (image_size, image_size), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    for o in scene.objects:
        fill = SHAPE_COLORS[o.color]
        x0, y0, x1, y1 = o.box
        cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
        if o.shape == "circle":
            draw.ellipse(o.box, fill=fill)
        elif o.shape == "square":
            draw.rectangle(o.box, fill=fill)
        elif o.shape == "triangle":
            draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill)
        elif o.shape == "diamond":
            draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
        else:  # star: ten points alternating between the outer and inner radius
            points = [(cx + r * (1 if k % 2 == 0 else 0.45) * math.sin(math.pi * k / 5),
                       cy - r * (1 if k % 2 == 0 else 0.45) * math.cos(math.pi * k / 5)) for k in range(10)]
            draw.polygon(points, fill=fill)
    return image


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _exists_q(color: str, shape: str) -> str:
    return f"Is there {_article(color)} {color} {shape} in the image?"


def _count_q(n: int) -> str:
    return "Is there 1 shape in the image?" if n == 1 else f"Are there {n} shapes in the image?"


def _absent(scene: Scene) -> list[tuple[str, str]]:
    return [(c, s) for c, s in ALL_OBJECTS if not scene.has(c, s)]


def _pope_negatives(
    category: str, scene: Scene, rng: random.Random, ranking: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    """POPE negatives: random absent objects, the most frequent absent ones, or absent ones sharing colour/shape."""
    k = len(scene.objects)
    if category == "random":
        return rng.sample(_absent(scene), k)
    if category == "popular":
        return [o for o in ranking if not scene.has(*o)][:k]
    related = [(c, s) for c, s in _absent(scene) if any(c == o.color or s == o.shape for o in scene.objects)]
    return rng.sample(related, k)


def _pope_lines(category: str, scenes: list[Scene], rng: random.Random) -> list[dict]:
    """POPE lines: per image one yes per present object and as many no's, interleaved as in the original files."""
    frequency = Counter((o.color, o.shape) for s in scenes for o in s.objects)
    ranking = sorted(ALL_OBJECTS, key=lambda o: -frequency[o])
    lines = []
    for i, scene in enumerate(scenes):
        negatives = _pope_negatives(category, scene, rng, ranking)
        for o, negative in zip(scene.objects, negatives):
            for (color, shape), label in (((o.color, o.shape), "yes"), (negative, "no")):
                lines.append({"question_id": len(lines) + 1, "image": f"eval_{i:05d}.png",
                              "text": _exists_q(color, shape), "label": label})
    return lines


def _yes_no_pair(kind: str, scene: Scene, rng: random.Random) -> tuple[str, str] | None:
    """A (Yes question, No question) pair in the MME/POPE style, or None when the scene cannot support the kind."""
    if kind == "existence":
        o = rng.choice(scene.objects)
        return _exists_q(o.color, o.shape), _exists_q(*rng.choice(_absent(scene)))
    if kind == "count":
        n = len(scene.objects)
        return _count_q(n), _count_q(rng.choice([m for m in range(1, MAX_OBJECTS + 1) if m != n]))
    if kind == "dominant_color":
        dominant = scene.dominant_color
        if not dominant:
            return None
        other = rng.choice([c for c in SHAPE_COLORS if c != dominant])
        return f"Is the dominant color of the shapes {dominant}?", f"Is the dominant color of the shapes {other}?"
    if kind == "background":
        other = rng.choice([b for b in BACKGROUNDS if b != scene.background])
        return f"Is the background {scene.background}?", f"Is the background {other}?"
    sided = [o for o in scene.objects if o.side]
    if not sided:
        return None
    o = rng.choice(sided)
    wrong = "right" if o.side == "left" else "left"
    return f"Is the {o.name} on the {o.side} of the image?", f"Is the {o.name} on the {wrong} of the image?"


def _mme_pair(subtask: str, scene: Scene, rng: random.Random) -> tuple[str, str] | None:
    """The (Yes question, No question) pair of an MME subtask; 'color' asks the dominant colour half of the time."""
    if subtask == "color":
        subtask = "dominant_color" if scene.dominant_color and rng.random() < 0.5 else "background"
    return _yes_no_pair(subtask, scene, rng)


def _mmstar_question(kind: str, scene: Scene, rng: random.Random) -> tuple[str, list[str], str] | None:
    """(question, four options, correct option) for one image, or None when the image cannot support the kind."""
    if kind == "background":
        options = list(BACKGROUNDS)
        rng.shuffle(options)
        return "What is the background color?", options, scene.background
    if kind == "count":
        return "How many shapes are there?", [str(n) for n in range(1, MAX_OBJECTS + 1)], str(len(scene.objects))
    if kind == "existence":
        o = rng.choice(scene.objects)
        options = [o.name] + [f"{c} {s}" for c, s in rng.sample(_absent(scene), 3)]
        rng.shuffle(options)
        return "Which of these shapes is in the image?", options, o.name
    cornered = [o for o in scene.objects if o.corner]
    if not cornered:
        return None
    o = rng.choice(cornered)
    return f"Where is the {o.name}?", list(CORNERS), o.corner


def _with_options(question: str, options: list[str]) -> str:
    """An MMStar question with its options inline, as in Lin-Chen/MMStar."""
    return f"{question}\nOptions: " + ", ".join(f"{letter}: {option}" for letter, option in zip(LETTERS, options))


def _mmstar_lines(scenes: list[Scene], rng: random.Random) -> list[dict]:
    """MMStar lines: one question per image and kind."""
    lines = []
    for i, scene in enumerate(scenes):
        for kind, (category, l2) in MMSTAR_CATEGORIES.items():
            made = _mmstar_question(kind, scene, rng)
            if made is None:
                continue
            question, options, correct = made
            lines.append({"index": len(lines), "question": _with_options(question, options),
                          "image": f"eval_{i:05d}.png", "answer": LETTERS[options.index(correct)],
                          "category": category, "l2_category": l2})
    return lines


def _open_question(kind: str, scene: Scene, rng: random.Random) -> tuple[str, str] | None:
    """(question, word or digit answer), or None when the scene cannot support the kind."""
    if kind == "background":
        return "What is the background color?", scene.background
    if kind == "dominant_color":
        return ("What is the dominant color of the shapes?", scene.dominant_color) if scene.dominant_color else None
    if kind == "count":
        return "How many shapes are there?", str(len(scene.objects))
    sided = [o for o in scene.objects if o.side]
    if not sided:
        return None
    o = rng.choice(sided)
    return f"Is the {o.name} on the left or the right?", o.side


def _open_lines(scenes: list[Scene], rng: random.Random) -> list[dict]:
    """Open short-answer lines (the training `open` style): one question per image and supported kind."""
    lines = []
    for i, scene in enumerate(scenes):
        for kind in _STYLE_KINDS["open"]:
            made = _open_question(kind, scene, rng)
            if made is not None:
                lines.append({"question_id": len(lines), "image": f"eval_{i:05d}.png", "question": made[0],
                              "answer": made[1], "category": kind})
    return lines


def _balanced_yes(rng: random.Random) -> Iterator[bool]:
    """Random Yes (True) / No choices whose running counts never differ by more than 2: no answer prior to learn."""
    lead = 0
    while True:
        yes = rng.random() < 0.5 if abs(lead) < 2 else lead < 0
        lead += 1 if yes else -1
        yield yes


def _train_turn(
    style: str, kind: str, scene: Scene, rng: random.Random, yes: Iterator[bool]
) -> tuple[str, str] | None:
    """(prompt, answer) of one training turn, the prompt made by the loaders' prompt builders, exactly as at
    evaluation; None when the scene cannot support the kind."""
    if style == "open":
        made = _open_question(kind, scene, rng)
        return made and (short_answer_prompt(made[0]), made[1])
    if style == "verify":
        pair = _yes_no_pair(kind, scene, rng)
        if pair is None:
            return None
        answer = "Yes" if next(yes) else "No"
        return short_answer_prompt(pair[answer == "No"]), answer
    made = _mmstar_question(kind, scene, rng)
    if made is None:
        return None
    question, options, correct = made
    return letter_prompt(_with_options(question, options)), LETTERS[options.index(correct)]


def _train_record(index: int, scene: Scene, rng: random.Random, turns: int, yes: Iterator[bool]) -> dict:
    """One LLaVA-format record: turns alternate between global and local questions, each in a random style."""
    scope = rng.choice(("global", "local"))
    conversations, used = [], set()
    for t in range(turns):
        # Random style, then random kind, skipping what the scene cannot ask. Every scene supports at least two
        # unused (style, kind) pairs per scope (background and count; existence), enough for turns_per_image <= 4.
        options = [(style, kind) for style in rng.sample(TRAIN_STYLES, len(TRAIN_STYLES))
                   for kind in rng.sample(_STYLE_KINDS[style], len(_STYLE_KINDS[style]))
                   if question_scope(kind) == scope and (style, kind) not in used]
        for style, kind in options:
            made = _train_turn(style, kind, scene, rng, yes)
            if made:
                break
        used.add((style, kind))
        prompt, answer = made
        conversations += [{"from": "human", "value": ("<image>\n" if t == 0 else "") + prompt},
                          {"from": "gpt", "value": answer}]
        scope = "local" if scope == "global" else "global"
    return {"id": f"shapes_train_{index:05d}", "image": f"images/train_{index:05d}.png", "conversations": conversations}


def _routing_record(record: dict) -> dict:
    """A routing question about a training image (alternately its type and its first question's scope), asked
    as cot_route asks it."""
    index = int(record["id"].rsplit("_", 1)[1])
    if index % 2:
        prompt, answer = IMAGE_PROMPT, "symbolic"
    else:
        question = first_question(record["conversations"])
        prompt, answer = QUESTION_PROMPT.replace("{question}", question), question_scope(question_kind(question))
    return {"id": f"{record['id']}_routing", "image": record["image"],
            "conversations": [{"from": "human", "value": f"<image>\n{prompt}"}, {"from": "gpt", "value": answer}]}


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def _write_jsonl(path: Path, lines: list[dict]) -> None:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")


def _write_images(folder: Path, prefix: str, scenes: list[Scene], image_size: int) -> None:
    folder.mkdir(parents=True)
    for i, scene in enumerate(scenes):
        render_scene(scene, image_size).save(folder / f"{prefix}_{i:05d}.png", format="PNG")


def generate_shapes(
    root: str | Path,
    *,
    seed: int = 0,
    n_train: int = 512,
    n_eval: int = 60,
    image_size: int = 64,
    turns_per_image: int = 2,
    routing_questions: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write the shapes dataset under root (reusing it when manifest.json has the same parameters) and return root.

    `routing_questions` adds one single-turn record per training image asking cot_route's routing questions
    (image type, every shapes image being 'symbolic'; or the scope of the image's first question), so that the
    tiny model learns to judge, as a real LVLM would zero-shot.
    """
    for name, value, low in (("n_train", n_train, 1), ("n_eval", n_eval, 1), ("image_size", image_size, 24)):
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    if not 1 <= turns_per_image <= 4:
        raise ValueError(f"turns_per_image must be in 1..4 (every scene supports 4 distinct questions), "
                         f"got {turns_per_image}")
    root = Path(root)
    params = {"version": VERSION, "seed": seed, "n_train": n_train, "n_eval": n_eval,
              "image_size": image_size, "turns_per_image": turns_per_image}
    if routing_questions:  # absent when off, so that existing datasets stay valid
        params["routing_questions"] = True
    manifest = root / "manifest.json"
    if not overwrite and manifest.is_file() and json.loads(manifest.read_text("utf-8")).get("params") == params:
        return root
    for name in _OUTPUTS:  # only our own outputs: root may hold other files
        path = root / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    root.mkdir(parents=True, exist_ok=True)

    # Independent streams: changing n_train leaves the evaluation sets unchanged, and vice versa.
    def stream(name: str) -> random.Random:
        return random.Random(f"shapes/{seed}/{name}")

    train_rng, eval_rng = stream("train_scenes"), stream("eval_scenes")
    train_scenes = [sample_scene(train_rng, image_size) for _ in range(n_train)]
    eval_scenes = [sample_scene(eval_rng, image_size) for _ in range(n_eval)]
    _write_images(root / "images", "train", train_scenes, image_size)
    _write_images(root / "eval_images", "eval", eval_scenes, image_size)
    turns_rng = stream("train_turns")
    yes = _balanced_yes(turns_rng)
    records = [_train_record(i, scene, turns_rng, turns_per_image, yes) for i, scene in enumerate(train_scenes)]
    if routing_questions:
        records += [_routing_record(record) for record in records]
    _write_json(root / "train.json", records)
    _write_json(root / "scenes.json", {
        **{f"images/train_{i:05d}.png": s.to_json() for i, s in enumerate(train_scenes)},
        **{f"eval_images/eval_{i:05d}.png": s.to_json() for i, s in enumerate(eval_scenes)},
    })

    counts = {"train_images": n_train, "train_turns": n_train * turns_per_image, "eval_images": n_eval,
              "pope": {}, "mme": {}}
    (root / "pope").mkdir()
    for category in POPE_CATEGORIES:
        lines = _pope_lines(category, eval_scenes, stream(f"pope_{category}"))
        _write_jsonl(root / "pope" / f"shapes_pope_{category}.json", lines)
        counts["pope"][category] = len(lines)
    (root / "mme").mkdir()
    for subtask in MME_SUBTASKS:
        rng, rows = stream(f"mme_{subtask}"), []
        for i, scene in enumerate(eval_scenes):
            pair = _mme_pair(subtask, scene, rng)
            if pair:
                rows += [f"eval_{i:05d}.png\t{q}{YES_NO_SUFFIX}\t{a}\n" for q, a in zip(pair, ("Yes", "No"))]
        if rows:  # a few images may ask no question of a subtask; an empty file would be a loading error
            (root / "mme" / f"{subtask}.txt").write_text("".join(rows), encoding="utf-8")
            counts["mme"][subtask] = len(rows)
    (root / "mmstar").mkdir()
    mmstar = _mmstar_lines(eval_scenes, stream("mmstar"))
    _write_jsonl(root / "mmstar" / "mmstar.jsonl", mmstar)
    counts["mmstar"] = len(mmstar)
    (root / "open").mkdir()
    open_lines = _open_lines(eval_scenes, stream("open"))
    _write_jsonl(root / "open" / "open.jsonl", open_lines)
    counts["open"] = len(open_lines)

    # Written last: a manifest marks a complete dataset.
    _write_json(manifest, {
        "params": params,
        "counts": counts,
        "scopes": {kind: question_scope(kind) for kind in GLOBAL_KINDS + LOCAL_KINDS},
        "palettes": {"shape_colors": list(SHAPE_COLORS), "backgrounds": list(BACKGROUNDS), "shapes": list(SHAPES)},
    })
    return root
