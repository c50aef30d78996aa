"""The predictions file read back: resuming survives a torn write, and scoring names every bad record
(`file:line: field: ...`) instead of scoring it."""

import json
import logging

import pytest

from sinkflow.benchmarks.base import BENCHMARKS
from sinkflow.data import predictions
from sinkflow.data.errors import DataFormatError
from sinkflow.data.predictions import PredictionsWriter, read_predictions
from sinkflow.eval.metrics import score_records
from sinkflow.eval.score import main as score_main

LOGGER = "sinkflow.data.predictions"


def pope(i: int, prediction: str = "Yes", **extra) -> dict:
    return {
        "benchmark": "pope",
        "id": f"random/{i}",
        "category": "random",
        "question": "q",
        "answer": "yes",
        "prediction": prediction,
        "prompt": "p",
        **extra,
    }


def lines(*records: dict) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


@pytest.mark.parametrize(
    "torn",
    [b'{"benchmark": "pope", "id": "rand', '{"prediction": "caf\u00e9'.encode()[:-1]],
    ids=["cut-json", "cut-utf8"],
)
def test_a_torn_last_line_is_dropped_and_its_question_asked_again(tmp_path, caplog, torn):
    path = tmp_path / "predictions.jsonl"
    whole = lines(pope(1), pope(2)).encode()
    path.write_bytes(whole + torn)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert predictions.load_for_resume(path) == [pope(1), pope(2)]
        writer = PredictionsWriter(path)  # the second reader of the same run finds nothing torn
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}:3: dropped a torn last line (the run stopped while writing it); its question is asked again"
    ]
    assert path.read_bytes() == whole  # truncated before anything is appended
    assert writer.done == {("pope", "random/1"), ("pope", "random/2")}
    writer.append([pope(3)])
    writer.close()
    assert read_predictions(path) == [pope(1), pope(2), pope(3)]


def test_a_whole_last_record_without_its_newline_is_kept(tmp_path, caplog):
    path = tmp_path / "predictions.jsonl"
    path.write_text(lines(pope(1)) + json.dumps(pope(2)))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert predictions.load_for_resume(path) == [pope(1), pope(2)]
    assert caplog.records == []
    assert path.read_text() == lines(pope(1), pope(2))
    writer = PredictionsWriter(path)
    writer.append([pope(3)])
    writer.close()
    assert read_predictions(path) == [pope(1), pope(2), pope(3)]


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (lines(pope(1)) + '{"benchmark": "po\n' + lines(pope(3)), 2),  # in the middle
        (lines(pope(1), pope(2)) + '{"benchmark": "po\n', 3),  # last, but its newline was written: no kill tore it
    ],
)
def test_a_malformed_line_that_no_kill_explains_is_still_an_error(tmp_path, text, line):
    path = tmp_path / "predictions.jsonl"
    path.write_text(text)
    with pytest.raises(DataFormatError) as error:
        predictions.load_for_resume(path)
    assert str(error.value).startswith(f"{path}:{line}: <line>: expected a JSON object (Unterminated string")
    assert path.read_text() == text


def test_an_empty_or_missing_file_resumes_from_nothing(tmp_path):
    assert predictions.load_for_resume(tmp_path / "missing.jsonl") == []
    (tmp_path / "empty.jsonl").write_text("")
    assert predictions.load_for_resume(tmp_path / "empty.jsonl") == []


def test_the_writer_writes_a_batch_at_once_and_syncs_on_close(tmp_path, monkeypatch):
    writes, synced = [], []

    class Counted:
        """The writer's file, counting write calls."""

        def __init__(self, file):
            self.file = file

        def write(self, text):
            writes.append(text)
            return self.file.write(text)

        def __getattr__(self, name):
            return getattr(self.file, name)

    def opened(*args, **kwargs):
        return Counted(open(*args, **kwargs))  # noqa: SIM115  (the writer closes it)

    monkeypatch.setattr(predictions, "open", opened, raising=False)
    monkeypatch.setattr(predictions.os, "fsync", synced.append)
    path = tmp_path / "predictions.jsonl"
    writer = PredictionsWriter(path)
    assert read_predictions(path) == []  # created at once: an evaluation without questions still has a file
    assert writer.append([pope(1), pope(2), pope(1)]) == 2
    assert writes == [lines(pope(1), pope(2))]
    assert read_predictions(path) == [pope(1), pope(2)]  # flushed: on disk before close
    assert synced == []
    writer.close()
    writer.close()
    assert len(synced) == 1


def mme(i: int, **change) -> dict:
    return {
        "benchmark": "mme",
        "id": f"count/{i}.jpg/0",
        "category": "count",
        "image": f"{i}.jpg",
        "question": "q",
        "answer": "Yes",
        "prediction": "yes",
        "prompt": "p",
        **change,
    }


def mmstar(i: int, **change) -> dict:
    return {
        "benchmark": "mmstar",
        "id": str(i),
        "category": "math",
        "l2_category": "geometry",
        "question": "q",
        "answer": "A",
        "prediction": "A",
        "prompt": "p",
        **change,
    }


def without(record: dict, name: str) -> dict:
    return {k: v for k, v in record.items() if k != name}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (pope(2, prediction=None), "prediction: expected a string, got None"),
        (pope(2, benchmark=3), "benchmark: expected a string, got 3"),
        (pope(2, id=True), "id: expected a string or an integer, got True"),
        (pope(2, id=1.5), "id: expected a string or an integer, got 1.5"),
        (pope(2, question=["q"]), "question: expected a string, got ['q']"),
        (pope(2, answer=1), "answer: expected a string, got 1"),
        (pope(2, prompt=None), "prompt: expected a string, got None"),
        (pope(2, scope=1), "scope: expected a string, got 1"),
        (without(pope(2), "prediction"), "prediction: missing field(s) of a prediction record"),
        (without(pope(2), "category"), "category: missing field(s) that pope records need"),
        (pope(2, category=None), "category: expected a string, got None"),
        (without(mme(2), "image"), "image: missing field(s) that mme records need"),
        (mme(2, image=7), "image: expected a string, got 7"),
        (without(mmstar(2), "l2_category"), "l2_category: missing field(s) that mmstar records need"),
        (mmstar(2, l2_category=None), "l2_category: expected a string, got None"),
        ({**pope(2, benchmark="open"), "category": 3}, "category: expected a string, got 3"),
        (
            pope(2, category="randm"),
            "category: expected one of ('random', 'popular', 'adversarial') for pope, got 'randm'",
        ),
        (pope(2, answer="maybe"), "answer: expected one of ('yes', 'no') for pope, got 'maybe'"),
        (
            mme(2, category="counting"),
            "category: expected one of ('existence', 'count', 'position', 'color', 'posters', "
            "'celebrity', 'scene', 'landmark', 'artwork', 'OCR', 'commonsense_reasoning', "
            "'numerical_calculation', 'text_translation', 'code_reasoning') for mme, "
            "got 'counting'",
        ),
        (mme(2, answer="Y"), "answer: expected one of ('yes', 'no') for mme, got 'Y'"),
        (
            mmstar(2, l2_category="recognition"),
            "l2_category: expected one of ('geometry', 'numeric commonsense and "
            "calculation', 'statistical reasoning') for 'math', got 'recognition'",
        ),
        (
            pope(2, routing={"image": "symbolic"}),
            "routing: expected an object with a 'route' string, or a list of them (one per image), got "
            "{'image': 'symbolic'}",
        ),
        (
            pope(2, routing=[{"route": "both"}, {"image": "symbolic"}]),
            "routing: expected an object with a 'route' string, or a list of them (one per image), got "
            "[{'route': 'both'}, {'image': 'symbolic'}]",
        ),
        (
            pope(2, routing=[]),
            "routing: expected an object with a 'route' string, or a list of them (one per image), got []",
        ),
    ],
)
def test_every_field_the_scorers_read_is_checked_with_its_line(tmp_path, bad, message):
    path = tmp_path / "predictions.jsonl"
    path.write_text(lines(pope(1), bad))
    with pytest.raises(DataFormatError) as error:
        score_main([str(path)])
    assert str(error.value) == f"{path}:2: {message}"


@pytest.mark.parametrize("text", ["", "\n  \n\t\n"], ids=["empty", "blank"])
def test_a_file_without_records_is_not_scored(tmp_path, text):
    path = tmp_path / "predictions.jsonl"
    path.write_text(text)
    with pytest.raises(DataFormatError) as error:
        score_main([str(path)])
    assert str(error.value) == f"{path}: <file>: no prediction records: the file holds none"


def test_an_mme_results_folder_with_an_empty_subtask_file_is_not_scored(tmp_path):
    (tmp_path / "count.txt").write_text("1.jpg\tQ?\tYes\tyes\n1.jpg\tQ?\tNo\tno\n")
    (tmp_path / "color.txt").write_text("")
    with pytest.raises(DataFormatError) as error:
        score_main([str(tmp_path)])
    assert str(error.value) == f"{tmp_path / 'color.txt'}: <file>: no questions: the file holds none"


def test_a_repeated_id_with_another_prediction_is_an_error_naming_both_lines(tmp_path):
    path = tmp_path / "predictions.jsonl"
    path.write_text(lines(pope(1), pope(3), pope(2), pope(3, prediction="No")))
    with pytest.raises(DataFormatError) as error:
        score_main([str(path)])
    assert str(error.value) == (
        f"{path}:4: id: duplicate id 'random/3' of pope with a different prediction (first at line 2)"
    )


def test_identical_repeats_are_merged_with_a_notice(tmp_path, caplog):
    path = tmp_path / "predictions.jsonl"
    path.write_text(lines(pope(1), pope(2, "No"), pope(1), pope(2, "No"), pope(2, "No")))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert score_main([str(path)]) == score_records([pope(1), pope(2, "No")])
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: 3 record(s) repeat an earlier line exactly; each is counted once"
    ]


def test_an_unknown_benchmark_is_an_error_unless_allowed(tmp_path):
    path = tmp_path / "predictions.jsonl"
    path.write_text(lines(pope(1, "No", scope="local"), pope(2, benchmark="popee", scope="local")))
    with pytest.raises(DataFormatError) as error:
        score_main([str(path)])
    registered = tuple(BENCHMARKS.names())  # every benchmark module adds its name
    assert {"mme", "mmstar", "open", "pope"} <= set(registered)
    assert str(error.value) == (
        f"{path}:2: benchmark: unknown benchmark 'popee'; expected one of {registered} (--allow-unknown scores it "
        "by first-word exact match, outside all/*)"
    )
    scores = score_main([str(path), "--allow-unknown"])
    assert scores["popee/accuracy"] == 1.0 and scores["popee/local/accuracy"] == 1.0
    assert scores["all/local/accuracy"] == 0.0  # the POPE record alone
    path.write_text(lines(pope(1), pope(2, benchmark="all")))
    with pytest.raises(DataFormatError) as error:
        score_main([str(path), "--allow-unknown"])
    assert str(error.value) == (
        f"{path}:2: benchmark: an unknown benchmark's name prefixes its metric keys, so it "
        "must not be empty, 'all' or contain '/', got 'all'"
    )
