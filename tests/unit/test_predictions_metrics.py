"""Predictions files (append, dedupe, resume, errors) and the basic accuracy table."""

import json

import pytest

from sinkflow.benchmarks.base import BENCHMARKS, first_word
from sinkflow.data.errors import DataFormatError
from sinkflow.data.predictions import PredictionsWriter, read_predictions
from sinkflow.eval.metrics import score_records


def record(benchmark, id_, answer, prediction, **extra):
    return {
        "benchmark": benchmark,
        "id": id_,
        "question": "q",
        "answer": answer,
        "prediction": prediction,
        "prompt": "p",
        **extra,
    }


def test_writer_dedupes_and_resumes(tmp_path):
    path = tmp_path / "predictions.jsonl"
    writer = PredictionsWriter(path)
    pope = {"category": "random"}
    assert (
        writer.append(
            [record("pope", "random/1", "yes", "Yes", **pope), record("pope", "random/1", "yes", "No", **pope)]
        )
        == 1
    )
    mme = {"category": "count", "image": "a.jpg"}
    assert writer.append([record("mme", "random/1", "Yes", "No", **mme)]) == 1  # same id, other benchmark
    resumed = PredictionsWriter(path)
    assert resumed.done == {("pope", "random/1"), ("mme", "random/1")}
    assert (
        resumed.append(
            [record("pope", "random/1", "yes", "No", **pope), record("pope", "random/2", "no", "No", **pope)]
        )
        == 1
    )
    assert [r["prediction"] for r in read_predictions(path)] == ["Yes", "No", "No"]
    fresh = PredictionsWriter(path, resume=False)
    assert fresh.done == set() and path.read_text() == ""  # started over


def test_read_errors_name_file_line_and_field(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"benchmark": "pope", "id": "1", "question": "q", "answer": "yes", "prediction": "y", '
        '"prompt": "p", "category": "random"}\n{"benchmark": "pope", "id": "2"}\n'
    )
    with pytest.raises(DataFormatError, match=r"bad.jsonl:2: question, answer, prediction, prompt: missing"):
        read_predictions(path)
    path.write_text("not json\n")
    with pytest.raises(DataFormatError, match=r"bad.jsonl:1: <line>: expected a JSON object"):
        read_predictions(path)


@pytest.mark.parametrize(
    "text,expected",
    [("Yes.", "yes"), ("  no, it is not", "no"), ("(B) a cat", "b"), ("", ""), ("3", "3"), ("Left!", "left")],
)
def test_first_word_is_lower_cased_without_punctuation(text, expected):
    assert first_word(text) == expected


def test_scores_group_by_benchmark_category_and_scope():
    records = [
        record("pope", "random/1", "yes", "Yes.", category="random", scope="local"),
        record("pope", "random/2", "no", "Yes", category="random", scope="local"),
        record("pope", "popular/1", "no", "no", category="popular", scope="local"),
        record("mmstar", "1", "B", "B. red", category="coarse perception", l2_category="image emotion", scope="global"),
        record("open", "1", "white", "White.", category="background", scope="global"),
        record("open", "2", "3", "4", category="count", scope="global"),
    ]
    scores = score_records(records)
    assert {k: v for k, v in scores.items() if "/accuracy" in k and not k.startswith(("pope/r", "pope/p"))} == {
        "all/global/accuracy": 2 / 3,
        "all/local/accuracy": 2 / 3,
        "mmstar/coarse perception/accuracy": 1.0,
        "mmstar/coarse perception/image emotion/accuracy": 1.0,
        "mmstar/global/accuracy": 1.0,
        "open/accuracy": 0.5,
        "open/background/accuracy": 1.0,
        "open/count/accuracy": 0.0,
        "open/global/accuracy": 0.5,
        "pope/local/accuracy": 2 / 3,
    }
    assert scores["pope/random/accuracy"] == 0.5 and scores["pope/popular/accuracy"] == 1.0
    assert scores["mmstar/overall"] == 1.0


def test_wandb_gets_a_table_of_predictions_from_every_benchmark(tmp_path, hermetic_env, image_path):
    import wandb
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    from sinkflow.eval.callback import TABLE_COLUMNS, log_prediction_table

    logger = WandbLogger(save_dir=str(tmp_path), offline=True)
    sent = []
    logger.experiment.log = lambda data, **kwargs: sent.append(data)
    records = [
        {"benchmark": b, "id": str(i), "question": "q", "answer": "yes", "prediction": "no", "image_path": image_path}
        for b in ("pope", "mme")
        for i in range(10)
    ]
    log_prediction_table([CSVLogger(tmp_path), logger], records, size=4, parser="official")
    table = sent[0]["test/predictions"]
    assert isinstance(table, wandb.Table) and table.columns == list(TABLE_COLUMNS)
    assert [row[0] for row in table.data] == ["pope", "pope", "mme", "mme"]
    assert all(isinstance(row[TABLE_COLUMNS.index("image")], wandb.Image) for row in table.data)
    wandb.finish()


def test_a_table_row_judges_the_prediction_by_the_benchmark_rule_and_shows_the_route():
    """POPE's official rule reads "There is no dog." as no (a first-word match would not); a cot_route record shows
    the route it took and its whole decision."""
    from sinkflow.eval.callback import TABLE_COLUMNS, table_row

    decision = {"image": "symbolic", "question": "global", "route": "sinks_only"}
    pope = {
        **record("pope", "random/1", "no", "There is no dog.", category="random"),
        "question": "Is there a dog in the image?",
        "image_path": "/data/pope/1.png",
        "routing": decision,
    }
    row = dict(zip(TABLE_COLUMNS, table_row(pope, "official", lambda path: f"image of {path}")))
    assert row["image"] == "image of /data/pope/1.png" and row["question"] == "Is there a dog in the image?"
    assert row["answer"] == "no" and row["prediction"] == "There is no dog."
    assert row["correct"] is True and row["route"] == "sinks_only" and json.loads(row["routing"]) == decision
    assert table_row(pope, "lmms_eval", str)[TABLE_COLUMNS.index("correct")] is False  # lmms-eval: "no" only
    # Several images: the first is shown, each image's route listed; no image file: an empty cell.
    several = {**pope, "image_path": ["/a.png", "/b.png"], "routing": [decision, {**decision, "route": "both"}]}
    row = dict(zip(TABLE_COLUMNS, table_row(several, "official", str)))
    assert row["image"] == "/a.png" and row["route"] == "sinks_only,both"
    without = {k: v for k, v in pope.items() if k not in ("image_path", "routing")}
    row = dict(zip(TABLE_COLUMNS, table_row(without, "official", str)))
    assert row["image"] is None and row["route"] == "" and row["routing"] == ""


def test_a_pope_answer_that_is_not_yes_or_no_is_named():
    with pytest.raises(ValueError, match="POPE record 'random/1': answer must be yes or no, got 'maybe'"):
        score_records([record("pope", "random/1", "maybe", "yes", category="random")])


UNKNOWN = [
    record("pope", "random/1", "yes", "No", category="random", scope="local"),
    record("popee", "random/2", "no", "no.", category="random", scope="local"),
]


def test_an_unknown_benchmark_is_refused_not_scored():
    """A misspelt benchmark used to be scored by exact match and mixed into all/*."""
    with pytest.raises(ValueError) as error:
        score_records(UNKNOWN)
    registered = tuple(BENCHMARKS.names())  # every benchmark module adds its name
    assert {"mme", "mmstar", "open", "pope"} <= set(registered)
    assert str(error.value) == (
        f"record 'random/2': benchmark: unknown benchmark 'popee'; expected one of {registered}; "
        "allow_unknown scores it by first-word exact match, outside all/*"
    )


def test_allowed_unknown_benchmarks_are_scored_outside_the_aggregates():
    scores = score_records(UNKNOWN, allow_unknown=True)
    assert {k: v for k, v in scores.items() if k.startswith(("popee/", "all/"))} == {
        "popee/accuracy": 1.0,
        "popee/random/accuracy": 1.0,
        "popee/local/accuracy": 1.0,
        "all/local/accuracy": 0.0,  # the POPE record alone
    }


@pytest.mark.parametrize("name", ["all", "pope/random", ""])
def test_an_unknown_name_that_would_write_into_other_keys_is_refused(name):
    with pytest.raises(ValueError) as error:
        score_records([record(name, "1", "yes", "yes")], allow_unknown=True)
    assert str(error.value) == (
        f"record '1': benchmark: an unknown benchmark's name prefixes its metric keys, so it "
        f"must not be empty, 'all' or contain '/', got {name!r}"
    )


def test_routing_shares_and_time_come_from_the_records_each_question_once():
    """cot_route's decisions: each route's share of the routed questions and the mean deciding time; a question
    written twice (a resumed file) counts once; records without a decision are not routed questions."""

    def routed(i, route, seconds):
        return record("open", str(i), "red", "red", routing={"route": route, "seconds": seconds})

    records = [
        routed(0, "sinks_only", 0.1),
        routed(1, "both", 0.3),
        routed(2, "both", 0.2),
        routed(2, "both", 0.2),
        record("open", "3", "red", "red"),
    ]
    metrics = {k: v for k, v in score_records(records).items() if k.startswith("routing/")}
    assert metrics.keys() == {"routing/sinks_only", "routing/both", "routing/seconds_per_image"}
    assert metrics["routing/sinks_only"] == pytest.approx(1 / 3) and metrics["routing/both"] == pytest.approx(2 / 3)
    assert metrics["routing/seconds_per_image"] == pytest.approx(0.2)
    assert not [k for k in score_records([record("open", "0", "red", "red")]) if k.startswith("routing/")]
