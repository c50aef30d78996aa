"""The synthetic shapes dataset, written in the training (LLaVA) and benchmark (POPE / MME / MMStar, open) file
formats; each question knows its kind and global / local scope, which evaluation scores separately."""

from sinkflow.shapes.generate import build_shapes, generate_shapes
from sinkflow.shapes.questions import GLOBAL_KINDS, LOCAL_KINDS, annotate_scope, question_scope, scope_of
from sinkflow.shapes.scene import BACKGROUNDS, MAX_OBJECTS, SHAPE_COLORS, SHAPES

__all__ = [
    "BACKGROUNDS",
    "GLOBAL_KINDS",
    "LOCAL_KINDS",
    "MAX_OBJECTS",
    "SHAPES",
    "SHAPE_COLORS",
    "annotate_scope",
    "build_shapes",
    "generate_shapes",
    "question_scope",
    "scope_of",
]
