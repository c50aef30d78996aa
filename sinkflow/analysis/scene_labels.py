"""Image-level labels of the shapes dataset (`scenes.json`), for analyses that score what tokens encode
(`probe`: the label predicted from tokens; `decode`: the label's word ranked among the decoded words)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sinkflow.checks import choice
from sinkflow.shapes import BACKGROUNDS, MAX_OBJECTS, SHAPE_COLORS, SHAPES


@dataclass(frozen=True)
class SceneTarget:
    """An image-level label read from a scene: its candidate values and how to read it (None: undefined)."""

    vocabulary: tuple[str, ...]
    read: Callable[[dict], str | None]


def _largest_shape(scene: dict) -> str:
    """The shape of largest box area (the 'main object'); ties go to the object listed first."""

    def area(o: dict) -> int:
        x0, y0, x1, y1 = o["box"]
        return (x1 - x0) * (y1 - y0)

    return max(scene["objects"], key=area)["shape"]


def _dominant_color(scene: dict) -> str | None:
    """The colour of a strict majority of the shapes (as `shapes.Scene.dominant_color`), else None."""
    color, n = Counter(o["color"] for o in scene["objects"]).most_common(1)[0]
    return color if 2 * n > len(scene["objects"]) else None


SCENE_TARGETS = {
    "background": SceneTarget(tuple(BACKGROUNDS), lambda scene: scene["background"]),
    "count": SceneTarget(tuple(str(n) for n in range(1, MAX_OBJECTS + 1)), lambda scene: str(len(scene["objects"]))),
    "dominant_color": SceneTarget(tuple(SHAPE_COLORS), _dominant_color),
    "largest_shape": SceneTarget(SHAPES, _largest_shape),
}


def check_target(target: str, key: str) -> SceneTarget:
    """The scene target called `target`, with an error naming the setting `key` otherwise."""
    return SCENE_TARGETS[choice(key, target, SCENE_TARGETS)]


def read_scenes(path: str | Path, key: str) -> dict[str, dict]:
    """scenes.json: each image's scene keyed by its path relative to the dataset root; `key` names the setting."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{key}: no scenes file at {path}; image labels come from the shapes dataset's "
            "scenes.json (set it to <dataset root>/scenes.json)"
        )
    return json.loads(path.read_text("utf-8"))


def by_file_name(scenes: dict[str, dict]) -> dict[str, dict]:
    """Scenes keyed by image file name, which is what evaluation items carry as `image`."""
    named = {Path(relative).name: scene for relative, scene in scenes.items()}
    if len(named) != len(scenes):
        raise ValueError("scenes.json image file names are not unique: evaluation items cannot be matched to scenes")
    return named
