"""Reading question files: UTF-8 lines and JSON lines numbered for error messages, checked fields and image
paths (the benchmark loaders and the predictions file read through these)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from sinkflow.data.errors import DataFormatError

Row = TypeVar("Row")


def question_rows(path: Path, rows: Iterable[Row]) -> Iterator[Row]:
    """The rows of a question file, which must hold at least one: an empty file would otherwise evaluate nothing
    and the run would still succeed."""
    empty = True
    for row in rows:
        empty = False
        yield row
    if empty:
        raise DataFormatError(path, None, "<file>", "no questions: the file holds none")


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:  # line by line, so that a bad byte is named by its line (a leading BOM is dropped)
                line = raw.decode("utf-8-sig" if line_no == 1 else "utf-8").rstrip("\r\n")
            except UnicodeDecodeError as err:
                byte = f"{raw[err.start]:#04x} at column {err.start + 1}"
                raise DataFormatError(path, line_no, "<encoding>", f"expected UTF-8 text, got byte {byte}") from None
            if line.strip():
                yield line_no, line


def read_lines(path: Path, allow_empty: bool = False) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, text) for each non-blank line of a UTF-8 question file; a file without any is
    an error unless `allow_empty` (a predictions file of a run that has not answered yet)."""
    return _lines(path) if allow_empty else question_rows(path, _lines(path))


def read_jsonl(path: Path, allow_empty: bool = False) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each JSON-lines record, rejecting bad JSON and non-objects."""
    for line_no, line in read_lines(path, allow_empty):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataFormatError(path, line_no, "<line>", f"expected a JSON object ({e.msg})") from None
        if not isinstance(obj, dict):
            raise DataFormatError(path, line_no, "<line>", f"expected a JSON object, got {type(obj).__name__}")
        yield line_no, obj


def field(obj: dict, name: str, kind: type, path: Path, line_no: int | str) -> Any:
    """Return obj[name], checking that it is present and of the given type (bool is not an int)."""
    if name not in obj:
        raise DataFormatError(path, line_no, name, "missing")
    value = obj[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise DataFormatError(path, line_no, name, f"expected {kind.__name__}, got {value!r}")
    return value


def image_path(image_root: Path, name: str, check: bool, path: Path, line_no: int | str) -> str:
    """Absolute path of an image under image_root; with check, it must exist."""
    full = image_root / name
    if check and not full.is_file():
        raise DataFormatError(path, line_no, "image", f"expected an image file at {full}")
    return str(full)
