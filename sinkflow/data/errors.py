"""The error raised for malformed data files."""

from __future__ import annotations

from pathlib import Path


class DataFormatError(ValueError):
    """A data file breaks its format; the message reads `file:where: field: what was expected`."""

    def __init__(self, path: str | Path, where: int | str | None, field: str, message: str):
        self.path, self.where, self.field = str(path), where, field
        location = self.path if where is None else f"{self.path}:{where}"
        super().__init__(f"{location}: {field}: {message}")
