"""Loader for LLaVA instruct data (a JSON list of {id, image?, conversations}; `image` one file name, or a list of
them for a conversation about several images)."""

from __future__ import annotations

import json
from pathlib import Path

from sinkflow.data.errors import DataFormatError

IMAGE_TOKEN = "<image>"
ROLES = ("human", "gpt")


def _check_record(record, index: int, path: Path, root: Path) -> dict:
    """Validate one record and return it with the image as an absolute path (None when text-only)."""
    where = f"record {index}"
    if not isinstance(record, dict):
        raise DataFormatError(path, where, "<record>", f"expected an object, got {type(record).__name__}")
    record_id = record.get("id")
    if not isinstance(record_id, str):
        raise DataFormatError(path, where, "id", f"expected a string, got {record_id!r}")
    where = f"record {index} (id {record_id!r})"
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise DataFormatError(path, where, "conversations", f"expected a non-empty list of turns, got {turns!r}")
    for t, turn in enumerate(turns):
        name = f"conversations[{t}]"
        if not isinstance(turn, dict):
            raise DataFormatError(path, where, name, f"expected an object with 'from' and 'value', got {turn!r}")
        expected = ROLES[t % 2]
        if turn.get("from") != expected:
            raise DataFormatError(
                path,
                where,
                f"{name}.from",
                f"expected {expected!r} (turns alternate human/gpt starting with human), got {turn.get('from')!r}",
            )
        if not isinstance(turn.get("value"), str):
            raise DataFormatError(path, where, f"{name}.value", f"expected a string, got {turn.get('value')!r}")
    if len(turns) % 2:
        raise DataFormatError(
            path, where, "conversations", "expected the last turn to be from 'gpt' (an even number of turns)"
        )
    image = record.get("image")
    if image is None:
        if any(IMAGE_TOKEN in turn["value"] for turn in turns):
            raise DataFormatError(
                path, where, "image", f"expected an image field: the conversation contains {IMAGE_TOKEN}"
            )
        return {"id": record_id, "image": None, "conversations": turns}
    if isinstance(image, str):
        return {"id": record_id, "image": _image_file(image, root, path, where, "image"), "conversations": turns}
    if not (isinstance(image, list) and image):
        raise DataFormatError(
            path, where, "image", f"expected a file name or a non-empty list of file names, got {image!r}"
        )
    # Several images: the conversation places each with its own placeholder.
    n_placeholders = sum(turn["value"].count(IMAGE_TOKEN) for turn in turns)
    if n_placeholders != len(image):
        raise DataFormatError(
            path,
            where,
            "image",
            f"expected one {IMAGE_TOKEN} per image: {len(image)} in `image`, {n_placeholders} in the conversation",
        )
    files = [_image_file(name, root, path, where, f"image[{k}]") for k, name in enumerate(image)]
    return {"id": record_id, "image": files, "conversations": turns}


def _image_file(name, root: Path, path: Path, where: str, field: str) -> str:
    """The absolute path of an existing image file named `name` under `root`."""
    if not isinstance(name, str):
        raise DataFormatError(path, where, field, f"expected a string file name, got {name!r}")
    full = (root / name).resolve()
    if not full.is_file():
        raise DataFormatError(path, where, field, f"expected an image file at {full}")
    return str(full)


def load_instruct(json_path: str | Path, image_root: str | Path) -> list[dict]:
    """Load and validate a LLaVA instruct JSON file; images resolve under image_root."""
    path, root = Path(json_path), Path(image_root)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DataFormatError(path, e.lineno, "<json>", f"expected valid JSON ({e.msg})") from None
    if not isinstance(data, list):
        raise DataFormatError(path, None, "<top level>", f"expected a JSON list of records, got {type(data).__name__}")
    records, first_index = [], {}
    for index, raw in enumerate(data):
        record = _check_record(raw, index, path, root)
        if record["id"] in first_index:
            raise DataFormatError(
                path,
                f"record {index} (id {record['id']!r})",
                "id",
                f"duplicate id, first used by record {first_index[record['id']]}",
            )
        first_index[record["id"]] = index
        records.append(record)
    return records
