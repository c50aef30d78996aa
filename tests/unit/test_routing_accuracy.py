"""cot_route's decisions judged against the truth a record carries (its question's scope, its images' type): per
question scope, per image type and per true route, with counts; shapes items carry that truth."""

import json

import pytest

from sinkflow.data.errors import DataFormatError
from sinkflow.data.predictions import read_predictions
from sinkflow.eval.metrics import routing_metrics, score_records
from sinkflow.shapes import annotate_scope, annotate_truth


def decision(image: str, question: str, route: str) -> dict:
    return {"image": image, "question": question, "route": route, "seconds": 0.5}


def record(i: int, routing, **truth) -> dict:
    return {
        "benchmark": "open",
        "id": str(i),
        "question": "q",
        "answer": "a",
        "prediction": "a",
        "prompt": "q",
        "routing": routing,
        **truth,
    }


RECORDS = [
    # symbolic + global: truly sinks_only
    record(0, decision("symbolic", "global", "sinks_only"), scope="global", image_type="symbolic"),
    record(1, decision("symbolic", "local", "both"), scope="global", image_type="symbolic"),
    record(2, decision("unknown", "global", "both"), scope="global", image_type="symbolic"),
    # symbolic + local: truly both
    record(3, decision("symbolic", "local", "both"), scope="local", image_type="symbolic"),
    record(4, decision("real_world", "local", "others_only"), scope="local", image_type="symbolic"),
    # real-world + local: truly others_only; a question with two images is two decisions
    record(
        5,
        [decision("real_world", "local", "others_only"), decision("symbolic", "local", "both")],
        scope="local",
        image_type="real_world",
    ),
    # scope known, image type not (no route truth); neither known (no truth at all)
    record(6, decision("real_world", "local", "others_only"), scope="global"),
    record(7, decision("symbolic", "global", "sinks_only")),
]


def test_routing_accuracy_per_question_scope_image_type_and_true_route():
    metrics = routing_metrics(RECORDS)
    assert {k: v for k, v in metrics.items() if "/accuracy/" in k or "/count/" in k} == {
        # scope right in records 0, 2, 3, 4, 5 (both images); wrong in 1 and 6: 6 of 8 decisions with a scope
        "routing/accuracy/question": 6 / 8,
        "routing/count/question": 8.0,
        # image type right in 0, 1, 3 and the first image of 5: 4 of 7 decisions with an image type
        "routing/accuracy/image": 4 / 7,
        "routing/count/image": 7.0,
        "routing/accuracy/sinks_only": 1 / 3,  # 0 right; 1 and 2 went to both
        "routing/count/sinks_only": 3.0,
        "routing/accuracy/both": 1 / 2,  # 3 right; 4 went to others_only
        "routing/count/both": 2.0,
        "routing/accuracy/others_only": 1 / 2,  # the first image of 5
        "routing/count/others_only": 2.0,
        "routing/accuracy/route": 3 / 7,
        "routing/count/route": 7.0,
    }
    # The shares still count every routed image, with or without truth: 9 decisions.
    assert metrics["routing/both"] == 4 / 9 and metrics["routing/sinks_only"] == 2 / 9
    assert metrics["routing/others_only"] == 3 / 9 and metrics["routing/seconds_per_image"] == 0.5


def test_records_without_truth_get_shares_and_no_accuracy():
    metrics = score_records([RECORDS[7], {**RECORDS[0], "id": "8", "scope": None, "image_type": None}])
    assert not [k for k in metrics if k.startswith(("routing/accuracy", "routing/count"))]
    assert metrics["routing/sinks_only"] == 1.0
    # A deciding strategy whose decisions name no labels is not judged, even on a record that knows the truth.
    unlabelled = routing_metrics([{**RECORDS[0], "routing": {"route": "both"}}])
    assert unlabelled == {"routing/both": 1.0}


def test_shapes_items_are_symbolic_and_keep_their_scope_and_the_predictions_file_checks_the_type(tmp_path):
    item = {"benchmark": "open", "id": "1", "category": "position", "question": "q", "answer": "left"}
    assert annotate_scope(item) == {"scope": "local"}
    assert annotate_truth(item) == {"scope": "local", "image_type": "symbolic"}
    path = tmp_path / "predictions.jsonl"
    path.write_text(json.dumps(RECORDS[0]) + "\n")
    assert read_predictions(path)[0]["image_type"] == "symbolic"
    path.write_text(json.dumps({**RECORDS[0], "image_type": 1}) + "\n")
    with pytest.raises(DataFormatError, match="image_type.*expected a string, got 1"):
        read_predictions(path)
