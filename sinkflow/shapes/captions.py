"""Brief captions of a scene, LLaVA stage-1 style (one "describe the image" turn per training image): the
background, then every shape by colour, kind and grid cell, in reading order. Captions name every object and where
it sits, so they teach an encoder trained from scratch what each region holds, the local detail the short answers
alone supervise too sparsely."""

from __future__ import annotations

from sinkflow.shapes.questions import article
from sinkflow.shapes.scene import GRID, Obj, Scene

CAPTION_PROMPT = "Describe the image briefly."
_ROWS = ("top", "middle", "bottom")
_COLUMNS = ("left", "center", "right")


def cell_name(obj: Obj) -> str:
    """'top left', 'middle right', 'center', ... for the shape's cell of the 3x3 grid."""
    if (obj.row, obj.col) == (GRID // 2, GRID // 2):
        return "center"
    return f"{_ROWS[obj.row]} {_COLUMNS[obj.col]}"


def caption(scene: Scene) -> str:
    """'A gray background with a red circle at the top left and a blue star at the center.'"""
    named = [
        f"{article(o.color)} {o.color} {o.shape} at the {cell_name(o)}"
        for o in sorted(scene.objects, key=lambda o: (o.row, o.col))
    ]
    listed = named[0] if len(named) == 1 else ", ".join(named[:-1]) + " and " + named[-1]
    return f"{article(scene.background).capitalize()} {scene.background} background with {listed}."
