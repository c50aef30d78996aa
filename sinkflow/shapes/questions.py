"""Questions about a scene, in each format the shapes data is written in: POPE and MME yes/no verification,
MMStar multiple choice, open short answers, and the LLaVA training turns that mix the three prompt styles.

Every builder returns `Question`s that carry their kind (and, through it, their global / local scope), so nothing
downstream reads a kind back from question text. An evaluation file cannot always store the kind (MME rows are
image, question, answer), so each file's category decides it: `EVAL_KINDS` lists the kinds each category's builder
asks, and `scope_of` gives their common scope.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, NamedTuple, get_args

from sinkflow.benchmarks.common import short_answer_prompt
from sinkflow.benchmarks.mmstar import LETTERS, letter_prompt
from sinkflow.benchmarks.pope import CATEGORIES as POPE_CATEGORIES
from sinkflow.checks import choice
from sinkflow.shapes.formats.base import FORMATS
from sinkflow.shapes.scene import ALL_OBJECTS, BACKGROUNDS, CORNERS, MAX_OBJECTS, SHAPE_COLORS, Scene

GlobalKind = Literal["background", "dominant_color", "count"]
LocalKind = Literal["existence", "position"]
Kind = Literal[GlobalKind, LocalKind]
Scope = Literal["global", "local"]
# What every shapes image is, in cot_route's image-type labels: flat shapes drawn on a plain background.
IMAGE_TYPE = "symbolic"
GLOBAL_KINDS: tuple[str, ...] = get_args(GlobalKind)
LOCAL_KINDS: tuple[str, ...] = get_args(LocalKind)

# What each evaluation category asks. MME's colour subtask asks the dominant colour or the background.
MME_SUBTASK_KINDS = {
    "existence": ("existence",),
    "count": ("count",),
    "position": ("position",),
    "color": ("background", "dominant_color"),
}
MMSTAR_CATEGORIES = {
    "background": ("coarse perception", "image scene and topic"),
    "count": ("fine-grained perception", "object counting"),
    "existence": ("fine-grained perception", "recognition"),
    "position": ("fine-grained perception", "localization"),
}
OPEN_KINDS = ("background", "dominant_color", "count", "position")
EVAL_KINDS: dict[tuple[str, str], tuple[str, ...]] = {
    **{("pope", category): ("existence",) for category in POPE_CATEGORIES},
    **{("mme", subtask): kinds for subtask, kinds in MME_SUBTASK_KINDS.items()},
    **{("mmstar", l2): (kind,) for kind, (_, l2) in MMSTAR_CATEGORIES.items()},
    **{("open", kind): (kind,) for kind in OPEN_KINDS},
}
# Training prompt styles, one per evaluation format: open short answer, MME/POPE yes/no verification, MMStar
# multiple choice. Existence has no open style: its open question is already the POPE verification question.
TRAIN_STYLES = ("open", "verify", "choice")
_STYLE_KINDS = {"open": OPEN_KINDS, "verify": GLOBAL_KINDS + LOCAL_KINDS, "choice": tuple(MMSTAR_CATEGORIES)}


def question_scope(kind: str) -> Scope:
    """'global' or 'local' for a question kind."""
    return "global" if choice("question kind", kind, Kind) in GLOBAL_KINDS else "local"


def scope_of(benchmark: str, category: str, l2_category: str | None = None) -> Scope:
    """'global' or 'local' for a shapes evaluation item, from its benchmark, category and (MMStar) l2 category."""
    key = (benchmark, l2_category if benchmark == "mmstar" else category)
    if key not in EVAL_KINDS:
        raise ValueError(
            f"no shapes scope for benchmark={benchmark!r} category={category!r} l2_category={l2_category!r}"
        )
    (scope,) = {question_scope(kind) for kind in EVAL_KINDS[key]}  # a category never mixes scopes
    return scope


def annotate_scope(item: dict) -> dict:
    """Extra metadata for an evaluation item: its `scope` (global / local), scored separately (a registered shapes
    format says it for its own items, or leaves them without one)."""
    if item["benchmark"] in FORMATS:
        scope = FORMATS[item["benchmark"]].scope
        return {"scope": scope(item)} if scope is not None else {}
    return {"scope": scope_of(item["benchmark"], item["category"], item.get("l2_category"))}


def annotate_truth(item: dict) -> dict:
    """Extra metadata for an evaluation item: its `scope` (`annotate_scope`) and its images' `image_type`
    ('symbolic': every shapes image is a drawing), the truth cot_route's routing decisions are judged against."""
    return {**annotate_scope(item), "image_type": IMAGE_TYPE}


@dataclass(frozen=True)
class Question:
    """A question as a builder made it: its text (for a training turn, the whole prompt), answer and kind."""

    kind: Kind
    text: str
    answer: str

    @property
    def scope(self) -> Scope:
        return question_scope(self.kind)


class Asked(NamedTuple):
    """A question asked of one evaluation image (its index)."""

    image: int
    question: Question


def article(word: str) -> str:
    """'a' or 'an' before `word`."""
    return "an" if word[0] in "aeiou" else "a"


def _exists(color: str, shape: str, answer: str) -> Question:
    return Question("existence", f"Is there {article(color)} {color} {shape} in the image?", answer)


def _count(n: int, answer: str) -> Question:
    return Question(
        "count", "Is there 1 shape in the image?" if n == 1 else f"Are there {n} shapes in the image?", answer
    )


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


def pope_questions(category: str, scenes: list[Scene], rng: random.Random) -> list[Asked]:
    """POPE questions: per image one yes per present object and as many no's, interleaved as in the original
    files."""
    frequency = Counter((o.color, o.shape) for s in scenes for o in s.objects)
    ranking = sorted(ALL_OBJECTS, key=lambda o: -frequency[o])
    asked = []
    for i, scene in enumerate(scenes):
        negatives = _pope_negatives(category, scene, rng, ranking)
        for o, negative in zip(scene.objects, negatives):
            asked += [Asked(i, _exists(o.color, o.shape, "yes")), Asked(i, _exists(*negative, "no"))]
    return asked


def _yes_no_pair(kind: str, scene: Scene, rng: random.Random) -> tuple[Question, Question] | None:
    """A (Yes question, No question) pair in the MME/POPE style, or None when the scene cannot support the kind."""
    if kind == "existence":
        o = rng.choice(scene.objects)
        return _exists(o.color, o.shape, "Yes"), _exists(*rng.choice(_absent(scene)), "No")
    if kind == "count":
        n = len(scene.objects)
        return _count(n, "Yes"), _count(rng.choice([m for m in range(1, MAX_OBJECTS + 1) if m != n]), "No")
    if kind == "dominant_color":
        dominant = scene.dominant_color
        if not dominant:
            return None
        other = rng.choice([c for c in SHAPE_COLORS if c != dominant])
        return (
            Question(kind, f"Is the dominant color of the shapes {dominant}?", "Yes"),
            Question(kind, f"Is the dominant color of the shapes {other}?", "No"),
        )
    if kind == "background":
        other = rng.choice([b for b in BACKGROUNDS if b != scene.background])
        return (
            Question(kind, f"Is the background {scene.background}?", "Yes"),
            Question(kind, f"Is the background {other}?", "No"),
        )
    sided = [o for o in scene.objects if o.side]
    if not sided:
        return None
    o = rng.choice(sided)
    wrong = "right" if o.side == "left" else "left"
    return (
        Question("position", f"Is the {o.name} on the {o.side} of the image?", "Yes"),
        Question("position", f"Is the {o.name} on the {wrong} of the image?", "No"),
    )


def mme_questions(subtask: str, scenes: list[Scene], rng: random.Random) -> list[Asked]:
    """An MME subtask's questions: a (Yes, No) pair per image that supports the subtask, as the official files
    pair them."""
    asked = []
    for i, scene in enumerate(scenes):
        kind = subtask
        if subtask == "color":  # the dominant colour half of the time (when there is one), else the background
            kind = "dominant_color" if scene.dominant_color and rng.random() < 0.5 else "background"
        pair = _yes_no_pair(kind, scene, rng)
        if pair:
            asked += [Asked(i, question) for question in pair]
    return asked


def _choice_question(kind: str, scene: Scene, rng: random.Random) -> Question | None:
    """An MMStar question, its four options inline as in Lin-Chen/MMStar and the correct letter as answer; None
    when the scene cannot support the kind."""
    if kind == "background":
        options = list(BACKGROUNDS)
        rng.shuffle(options)
        question, correct = "What is the background color?", scene.background
    elif kind == "count":
        options = [str(n) for n in range(1, MAX_OBJECTS + 1)]
        question, correct = "How many shapes are there?", str(len(scene.objects))
    elif kind == "existence":
        o = rng.choice(scene.objects)
        options = [o.name] + [f"{c} {s}" for c, s in rng.sample(_absent(scene), 3)]
        rng.shuffle(options)
        question, correct = "Which of these shapes is in the image?", o.name
    else:
        cornered = [o for o in scene.objects if o.corner]
        if not cornered:
            return None
        o = rng.choice(cornered)
        options, question, correct = list(CORNERS), f"Where is the {o.name}?", o.corner
    inline = ", ".join(f"{letter}: {option}" for letter, option in zip(LETTERS, options))
    return Question(kind, f"{question}\nOptions: {inline}", LETTERS[options.index(correct)])


def mmstar_questions(scenes: list[Scene], rng: random.Random) -> list[Asked]:
    """MMStar questions: one per image and kind the image supports."""
    return [
        Asked(i, question)
        for i, scene in enumerate(scenes)
        for kind in MMSTAR_CATEGORIES
        if (question := _choice_question(kind, scene, rng)) is not None
    ]


def _open_question(kind: str, scene: Scene, rng: random.Random) -> Question | None:
    """A question with a word or digit answer, or None when the scene cannot support the kind."""
    if kind == "background":
        return Question(kind, "What is the background color?", scene.background)
    if kind == "dominant_color":
        dominant = scene.dominant_color
        return Question(kind, "What is the dominant color of the shapes?", dominant) if dominant else None
    if kind == "count":
        return Question(kind, "How many shapes are there?", str(len(scene.objects)))
    sided = [o for o in scene.objects if o.side]
    if not sided:
        return None
    o = rng.choice(sided)
    return Question("position", f"Is the {o.name} on the left or the right?", o.side)


def open_questions(scenes: list[Scene], rng: random.Random) -> list[Asked]:
    """Open short-answer questions (the training `open` style): one per image and kind the image supports."""
    return [
        Asked(i, question)
        for i, scene in enumerate(scenes)
        for kind in OPEN_KINDS
        if (question := _open_question(kind, scene, rng)) is not None
    ]


def balanced_yes(rng: random.Random) -> Iterator[bool]:
    """Random Yes (True) / No choices whose running counts never differ by more than 2: no answer prior to learn."""
    lead = 0
    while True:
        yes = rng.random() < 0.5 if abs(lead) < 2 else lead < 0
        lead += 1 if yes else -1
        yield yes


def _train_turn(style: str, kind: str, scene: Scene, rng: random.Random, yes: Iterator[bool]) -> Question | None:
    """One training turn, its text the prompt the loaders' prompt builders make of the same question at
    evaluation; None when the scene cannot support the kind."""
    if style == "open":
        made = _open_question(kind, scene, rng)
        return made and Question(made.kind, short_answer_prompt(made.text), made.answer)
    if style == "verify":
        pair = _yes_no_pair(kind, scene, rng)
        if pair is None:
            return None
        made = pair[0] if next(yes) else pair[1]
        return Question(made.kind, short_answer_prompt(made.text), made.answer)
    made = _choice_question(kind, scene, rng)
    return made and Question(made.kind, letter_prompt(made.text), made.answer)


def train_questions(scene: Scene, rng: random.Random, turns: int, yes: Iterator[bool]) -> list[Question]:
    """The turns of one training conversation: they alternate between global and local questions, each in a random
    style."""
    scope = rng.choice(("global", "local"))
    questions, used = [], set()
    for _ in range(turns):
        # Random style, then random kind, skipping what the scene cannot ask. Every scene supports at least two
        # unused (style, kind) pairs per scope (background and count; existence), enough for turns_per_image <= 4.
        options = [
            (style, kind)
            for style in rng.sample(TRAIN_STYLES, len(TRAIN_STYLES))
            for kind in rng.sample(_STYLE_KINDS[style], len(_STYLE_KINDS[style]))
            if question_scope(kind) == scope and (style, kind) not in used
        ]
        for style, kind in options:
            made = _train_turn(style, kind, scene, rng, yes)
            if made:
                break
        used.add((style, kind))
        questions.append(made)
        scope = "local" if scope == "global" else "global"
    return questions
