"""Reading helpers shared by the benchmark loaders."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from sinkflow.data.errors import DataFormatError

SHORT_ANSWER = "\nAnswer the question using a single word or phrase."


def short_answer_prompt(question: str, suffix: str = SHORT_ANSWER) -> str:
    """The model prompt of a POPE or MME question: the question, then the instruction (LLaVA / lmms-eval's
    single-word-or-phrase suffix unless another is configured)."""
    return question.strip() + suffix


def read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, text) for each non-blank line of a UTF-8 file."""
    with open(path, encoding="utf-8", newline="") as f:
        for line_no, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if line.strip():
                yield line_no, line


def read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each JSON-lines record, rejecting bad JSON and non-objects."""
    for line_no, line in read_lines(path):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataFormatError(path, line_no, "<line>", f"expected a JSON object ({e.msg})") from None
        if not isinstance(obj, dict):
            raise DataFormatError(path, line_no, "<line>", f"expected a JSON object, got {type(obj).__name__}")
        yield line_no, obj


def field(obj: dict, name: str, kind: type, path: Path, line_no: int):
    """Return obj[name], checking that it is present and of the given type (bool is not an int)."""
    if name not in obj:
        raise DataFormatError(path, line_no, name, "missing")
    value = obj[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise DataFormatError(path, line_no, name, f"expected {kind.__name__}, got {value!r}")
    return value


def image_path(image_root: Path, name: str, check: bool, path: Path, line_no: int) -> str:
    """Absolute path of an image under image_root; with check, it must exist."""
    full = image_root / name
    if check and not full.is_file():
        raise DataFormatError(path, line_no, "image", f"expected an image file at {full}")
    return str(full)
