"""The extension point of the shapes generator: a benchmark's file format written from the evaluation scenes.

A format module registers a `ShapesFormat` under its benchmark's name:

    FORMATS.register("gqa", ShapesFormat(folder="gqa", write=write_gqa))

`generate_shapes` calls every registered format's `write(folder, scenes, rng, image_name)` after the built-in sets,
with the folder created, a random stream of its own (so adding a format changes no other file) and
`image_name(i)`, the file name of evaluation image i under `eval_images/`. `write` returns how many questions it
wrote (recorded in the manifest). The registered names are part of the manifest's params, so adding a format
regenerates cached datasets. `scope(item)`, when given, says whether a loaded item asks a global or a local
question (`annotate_scope`; the shapes scores per scope); without it the format's items carry no scope.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sinkflow.registry import Registry
from sinkflow.shapes.scene import Scene

Writer = Callable[[Path, list[Scene], random.Random, Callable[[int], str]], int]


@dataclass(frozen=True)
class ShapesFormat:
    """Where a benchmark's shapes files go (a folder under the dataset root) and what writes them."""

    folder: str
    write: Writer
    scope: Callable[[dict], str] | None = None


FORMATS: Registry[ShapesFormat] = Registry("shapes format", "sinkflow.shapes.formats")
