"""The synthetic shapes dataset, written in the training (LLaVA) and benchmark (POPE / MME / MMStar, open) file
formats; each question knows its kind and global / local scope, which evaluation scores separately, and every image is
symbolic (the truth cot_route's decisions are judged against)."""

from sinkflow.shapes.generate import build_shapes, generate_shapes
from sinkflow.shapes.questions import (
    GLOBAL_KINDS,
    IMAGE_TYPE,
    LOCAL_KINDS,
    annotate_scope,
    annotate_truth,
    question_scope,
    scope_of,
)
from sinkflow.shapes.scene import BACKGROUNDS, MAX_OBJECTS, SHAPE_COLORS, SHAPES

__all__ = [
    "BACKGROUNDS",
    "GLOBAL_KINDS",
    "IMAGE_TYPE",
    "LOCAL_KINDS",
    "MAX_OBJECTS",
    "SHAPES",
    "SHAPE_COLORS",
    "annotate_scope",
    "annotate_truth",
    "build_shapes",
    "generate_shapes",
    "question_scope",
    "scope_of",
]
