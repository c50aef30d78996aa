"""The LLaVA instruct loader: valid records load, and each malformed record is reported by file, record and field."""

import json
from pathlib import Path

import pytest

from sinkflow.data.errors import DataFormatError
from sinkflow.data.instruct import load_instruct


def _turns(*values: str) -> list[dict]:
    return [{"from": ("human", "gpt")[i % 2], "value": v} for i, v in enumerate(values)]


def _write(tmp_path: Path, records) -> Path:
    (tmp_path / "img").mkdir(exist_ok=True)
    (tmp_path / "img" / "a.png").write_bytes(b"png")
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    return path


GOOD = [
    {"id": "a", "image": "img/a.png", "conversations": _turns("<image>\nWhat is it?", "A cat.", "Color?", "Gray")},
    {"id": "b", "conversations": _turns("Say hi.", "Hi")},
]


def test_valid_records_load_with_absolute_image_paths(tmp_path):
    records = load_instruct(_write(tmp_path, GOOD), tmp_path)
    assert records[0] == {
        "id": "a",
        "image": str((tmp_path / "img" / "a.png").resolve()),
        "conversations": GOOD[0]["conversations"],
    }
    assert records[1]["image"] is None


@pytest.mark.parametrize(
    ("bad", "field", "expected"),
    [
        ({"id": "x", "image": "img/a.png"}, "conversations", "non-empty list"),
        ({"id": "x", "conversations": _turns("Q", "A")[::-1]}, "conversations[0].from", "'human'"),
        ({"id": "x", "conversations": _turns("Q", "A", "Q2")}, "conversations", "last turn"),
        ({"id": "x", "conversations": _turns("<image>\nQ", "A")}, "image", "image field"),
        ({"id": "x", "image": "img/missing.png", "conversations": _turns("<image>\nQ", "A")}, "image", "missing.png"),
        (
            {"id": "x", "conversations": [{"from": "human", "value": 3}, {"from": "gpt", "value": "A"}]},
            "conversations[0].value",
            "expected a string",
        ),
        ({"id": 7, "conversations": _turns("Q", "A")}, "id", "expected a string"),
        ({"id": "a", "conversations": _turns("Q", "A")}, "id", "duplicate id, first used by record 0"),
    ],
)
def test_errors_name_file_record_and_field(tmp_path, bad, field, expected):
    path = _write(tmp_path, [*GOOD, bad])
    with pytest.raises(DataFormatError) as error:
        load_instruct(path, tmp_path)
    message = str(error.value)
    assert message.startswith(f"{path}:record 2")
    assert f": {field}: " in message and expected in message
    if isinstance(bad["id"], str):
        assert f"(id '{bad['id']}')" in message


def test_top_level_and_json_errors_name_the_file(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('{"id": "a"}')
    with pytest.raises(DataFormatError, match=rf"^{path}: <top level>: expected a JSON list"):
        load_instruct(path, tmp_path)
    path.write_text('[\n{"id": "a",\n]')
    with pytest.raises(DataFormatError, match=rf"^{path}:3: <json>: expected valid JSON"):
        load_instruct(path, tmp_path)
