"""Predictions files (JSON lines, DESIGN.md §3): appended as produced, resumable, deduplicated by id."""

from __future__ import annotations

import json
from pathlib import Path

REQUIRED = ("benchmark", "id", "question", "answer", "prediction", "prompt")


def record_key(record: dict) -> tuple[str, str]:
    """Identity of a prediction: ids are unique within a benchmark."""
    return record["benchmark"], str(record["id"])


def read_predictions(path: str | Path) -> list[dict]:
    """Read a predictions file; errors name the file, line and missing field."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({err.msg})") from err
            missing = [k for k in REQUIRED if k not in record]
            if missing:
                raise ValueError(f"{path}:{line_no}: missing field(s) {', '.join(missing)}")
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
