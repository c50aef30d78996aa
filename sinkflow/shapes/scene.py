"""What a shapes image shows: the palettes, the 3x3 grid the shapes sit in, and how a random scene is drawn."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

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
CORNERS = ("top left", "top right", "bottom left", "bottom right")
GRID = 3  # objects sit in distinct cells of a 3x3 grid: no overlap, and the middle column is neither left nor right
MAX_OBJECTS = 4


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
        return {
            "background": self.background,
            "objects": [
                {"shape": o.shape, "color": o.color, "cell": [o.row, o.col], "box": list(o.box)} for o in self.objects
            ],
        }


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
