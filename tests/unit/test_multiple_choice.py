"""VLMEvalKit's `can_infer`, the option-letter reading of every benchmark's `vlmevalkit` parser, on worked answers
(each case checked against VLMEvalKit's own function when the benchmark modules were written)."""

import pytest

from sinkflow.benchmarks.multiple_choice import can_infer, choice_vlmevalkit

COUNT = {"A": "3", "B": "2", "C": "1", "D": "0"}
DEPTH = {"A": "lamp", "B": "chair"}
LONG = {"A": "the lamp by the window", "B": "the chair by the door"}
ANIMALS = {"A": "cat", "B": "dog", "C": "bird"}
SHAPES = dict(zip("ABCD", ["red circle", "blue square", "green star", "yellow star"]))


@pytest.mark.parametrize(
    ("answer", "choices", "inferred"),
    [
        ("B", COUNT, "B"),
        ("The answer is (B).", COUNT, "B"),
        ("I think it is C", COUNT, "C"),
        ("(C) green star", SHAPES, "C"),
        ("The animal is B", ANIMALS, "B"),
        ("B, because the lamp is nearer than the chair", DEPTH, None),  # a lone letter outside the last 4 words
        ("A is what I would choose after some long thought", SHAPES, None),
        ("answer is c", COUNT, "C"),  # the stated answer, any case
        ("The correct answer is **B** since", ANIMALS, "B"),
        ("The answer is apple", DEPTH, "A"),  # no word boundary: the a of apple
        ("A or B", DEPTH, None),  # two letters
        ("B is my guess but the options A and C are close too", ANIMALS, None),
        ("the lamp", DEPTH, "A"),  # the one choice text contained
        ("it is a dog", ANIMALS, "B"),
        ("green star", SHAPES, "C"),
        ("star", SHAPES, None),  # in two options' texts
        ("the lamp or the chair", DEPTH, None),
        ("the lamp is closer than everything else in this room", DEPTH, None),  # over twice the choices' length
        ("Cannot determine the answer", DEPTH, "Z"),  # a refusal
        ("Z", DEPTH, "Z"),  # a lone Z token
        ("Failed to obtain answer via API. A", LONG, None),  # no letter reading after an API failure
        ("Failed to obtain answer via API: the chair by the door", LONG, "B"),  # but the text still matches
    ],
)
def test_can_infer(answer, choices, inferred):
    assert can_infer(answer, choices) == inferred
    # The letter a benchmark compares with its answer: a refusal is never right.
    assert choice_vlmevalkit(answer, choices) == (None if inferred == "Z" else inferred)
