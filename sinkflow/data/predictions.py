"""Predictions files (JSON lines, one record per question): appended as produced, resumable, checked on reading.

Reading checks every field that the scorers (each benchmark's `Benchmark` class) read, with its type and the values
the benchmark accepts, so that a bad record is named by file and line rather than failing later inside a score.
A (benchmark, id) written twice must be the same record.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from sinkflow.benchmarks.base import BENCHMARKS
from sinkflow.data.errors import DataFormatError
from sinkflow.data.files import read_jsonl

log = logging.getLogger(__name__)

TEXT = ("question", "answer", "prediction", "prompt")
REQUIRED = ("benchmark", "id", *TEXT)
# Read where present: they name per-category and per-scope accuracies; the truth routing decisions are judged by.
OPTIONAL = ("category", "scope", "image_type")


def record_key(record: dict) -> tuple[str, str]:
    """Identity of a prediction: ids are unique within a benchmark."""
    return record["benchmark"], str(record["id"])


def check_record(record: dict, path: Path, line_no: int) -> None:
    """Every field the scorers read is present and a string (`id`: a string or an integer)."""
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise DataFormatError(path, line_no, ", ".join(missing), "missing field(s) of a prediction record")
    benchmark = record["benchmark"]
    if not isinstance(benchmark, str):
        raise DataFormatError(path, line_no, "benchmark", f"expected a string, got {benchmark!r}")
    record_id = record["id"]
    if not isinstance(record_id, (str, int)) or isinstance(record_id, bool):
        raise DataFormatError(path, line_no, "id", f"expected a string or an integer, got {record_id!r}")
    scorer = BENCHMARKS.get(benchmark)
    own = scorer.fields if scorer else ()
    missing = [k for k in own if k not in record]
    if missing:
        raise DataFormatError(path, line_no, ", ".join(missing), f"missing field(s) that {benchmark} records need")
    for name in dict.fromkeys(TEXT + own + tuple(k for k in OPTIONAL if k in record)):
        if not isinstance(record[name], str):
            raise DataFormatError(path, line_no, name, f"expected a string, got {record[name]!r}")
    problem = scorer.record_problem(record) if scorer else None
    if problem:
        raise DataFormatError(path, line_no, *problem)
    routing = record.get("routing")
    decisions = routing if isinstance(routing, list) and routing else [routing]  # a list: one per image
    if routing is not None and not all(isinstance(d, dict) and isinstance(d.get("route"), str) for d in decisions):
        raise DataFormatError(
            path,
            line_no,
            "routing",
            f"expected an object with a 'route' string, or a list of them (one per image), got {routing!r}",
        )


def read_numbered_predictions(path: str | Path) -> list[tuple[int, dict]]:
    """(line, record) for each record of a predictions file (none for an empty one), every record checked.

    A record that repeats an earlier one exactly is kept once, with a warning; the same (benchmark, id) with other
    content is an error naming both lines (which answer would count is not ours to guess)."""
    path = Path(path)
    first: dict[tuple[str, str], tuple[int, dict]] = {}
    numbered, repeats = [], 0
    for line_no, record in read_jsonl(path, allow_empty=True):
        check_record(record, path, line_no)
        key = record_key(record)
        if key not in first:
            first[key] = (line_no, record)
            numbered.append((line_no, record))
            continue
        first_line, earlier = first[key]
        if record != earlier:
            differ = [
                k for k in {**earlier, **record} if k not in earlier or k not in record or earlier[k] != record[k]
            ]
            raise DataFormatError(
                path,
                line_no,
                "id",
                f"duplicate id {key[1]!r} of {key[0]} with a different "
                f"{', '.join(differ)} (first at line {first_line})",
            )
        repeats += 1
    if repeats:
        log.warning("%s: %d record(s) repeat an earlier line exactly; each is counted once", path, repeats)
    return numbered


def read_predictions(path: str | Path) -> list[dict]:
    """The records of a predictions file; errors name the file, line and field."""
    return [record for _, record in read_numbered_predictions(path)]


def drop_torn_tail(path: Path) -> None:
    """Make an interrupted run's file appendable. Records end with a newline, so a last line without one was being
    written when the run died: if it is a whole JSON object only its newline is missing (restored); otherwise it is
    dropped, with a warning, and the file truncated, since the next append would glue onto the torn bytes."""
    with open(path, "rb+") as f:
        data = f.read()
        start = data.rfind(b"\n") + 1
        tail = data[start:]
        if not tail.strip():
            return
        try:
            whole = isinstance(json.loads(tail.decode("utf-8")), dict)
        except ValueError:  # bad JSON or bytes cut inside a UTF-8 character
            whole = False
        if whole:
            f.write(b"\n")
            return
        f.truncate(start)
    log.warning(
        "%s:%d: dropped a torn last line (the run stopped while writing it); its question is asked again",
        path,
        data.count(b"\n") + 1,
    )


def load_for_resume(path: str | Path) -> list[dict]:
    """The records an interrupted evaluation already wrote (none without a file), after `drop_torn_tail`."""
    path = Path(path)
    if not path.exists():
        return []
    drop_torn_tail(path)
    return read_predictions(path)


class PredictionsWriter:
    """Appends records to a JSON-lines file, skipping any (benchmark, id) already written (`earlier`: the records
    the file held when it was opened)."""

    def __init__(self, path: str | Path, resume: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not resume and self.path.exists():
            self.path.unlink()
        self.earlier = load_for_resume(self.path)
        self.done = {record_key(r) for r in self.earlier}
        # open for the whole test epoch; `close` syncs it
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115

    def append(self, records: list[dict]) -> int:
        """Write the records not seen yet; returns how many were written."""
        fresh = []
        for record in records:
            key = record_key(record)
            if key not in self.done:
                self.done.add(key)
                fresh.append(record)
        if fresh:
            # One write per batch, flushed: a kill loses at most this batch and tears at most the last line.
            self._file.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in fresh))
            self._file.flush()
        return len(fresh)

    def close(self) -> None:
        """Put the file on disk (flushed data can still be lost with the machine) and close it."""
        if not self._file.closed:
            os.fsync(self._file.fileno())
            self._file.close()
