"""Predictions files (JSON lines, DESIGN.md §3): appended as produced, resumable, deduplicated by id."""

from __future__ import annotations

import json
from pathlib import Path

from sinkflow.data.benchmarks.common import read_jsonl
from sinkflow.data.errors import DataFormatError

REQUIRED = ("benchmark", "id", "question", "answer", "prediction", "prompt")


def record_key(record: dict) -> tuple[str, str]:
    """Identity of a prediction: ids are unique within a benchmark."""
    return record["benchmark"], str(record["id"])


def read_predictions(path: str | Path) -> list[dict]:
    """Read a predictions file; errors name the file, line and missing field."""
    records = []
    for line_no, record in read_jsonl(Path(path)):
        missing = [k for k in REQUIRED if k not in record]
        if missing:
            raise DataFormatError(path, line_no, ", ".join(missing), "missing field(s) of a prediction record")
        records.append(record)
    return records


class PredictionsWriter:
    """Appends records to a JSON-lines file, skipping any (benchmark, id) already written."""

    def __init__(self, path: str | Path, resume: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not resume and self.path.exists():
            self.path.unlink()
        self.done = {record_key(r) for r in read_predictions(self.path)} if self.path.exists() else set()

    def append(self, records: list[dict]) -> int:
        """Write the records not seen yet; returns how many were written."""
        fresh = []
        for record in records:
            key = record_key(record)
            if key not in self.done:
                self.done.add(key)
                fresh.append(record)
        if fresh:
            with open(self.path, "a", encoding="utf-8") as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in fresh)
        return len(fresh)
