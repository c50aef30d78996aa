"""The Hugging Face layouts (parquet, save_to_disk arrow) load to the same items as the original releases."""

import io
import json

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
from PIL import Image

from sinkflow.benchmarks.mme import load_mme, load_mme_hf
from sinkflow.benchmarks.mmstar import load_mmstar, load_mmstar_hf
from sinkflow.benchmarks.pope import load_pope, load_pope_hf
from sinkflow.data.errors import DataFormatError


def png(color) -> dict:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def same_items(hf_items, original_items):
    """Equal but for where the image file lives."""
    strip = [{k: v for k, v in i.items() if k != "image_path"} for i in hf_items]
    assert strip == [{k: v for k, v in i.items() if k != "image_path"} for i in original_items]
    assert all(Image.open(i["image_path"]).size == (8, 8) for i in hf_items)


def test_pope_parquet_matches_the_original_files(tmp_path):
    rows = [
        {
            "id": str(n),
            "question_id": str(q),
            "question": f"Is there a {obj} in the image?",
            "answer": a,
            "image_source": f"COCO_{q}",
            "image": png((q * 20, 0, 0)),
            "category": c,
        }
        for n, (q, obj, a, c) in enumerate(
            [(1, "dog", "yes", "random"), (2, "cat", "no", "random"), (1, "car", "no", "adversarial")]
        )
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "test.parquet")
    items = load_pope_hf(tmp_path / "test.parquet")
    for category in ("random", "adversarial"):
        lines = [
            {
                "question_id": int(r["question_id"]),
                "image": f"{r['image_source']}.jpg",
                "text": r["question"],
                "label": r["answer"],
            }
            for r in rows
            if r["category"] == category
        ]
        (tmp_path / f"x_pope_{category}.json").write_text("".join(json.dumps(line) + "\n" for line in lines))
    original = load_pope([tmp_path / "x_pope_random.json", tmp_path / "x_pope_adversarial.json"], tmp_path)
    same_items(items, original)
    assert [i["id"] for i in items] == ["random/1", "random/2", "adversarial/1"]


def test_mme_save_to_disk_pairs_questions_by_image(tmp_path):
    rows = [
        {
            "question_id": f"count/{img}",
            "image": png((i, 9, 9)),
            "question": f"{q} Please answer yes or no.",
            "answer": a,
            "category": "count",
        }
        for i, (img, q, a) in enumerate(
            [
                ("1.jpg", "Two dogs?", "Yes"),
                ("2.jpg", "A cat?", "No"),
                ("1.jpg", "Three dogs?", "No"),
                ("2.jpg", "Two cats?", "Yes"),
            ]
        )
    ]
    folder = tmp_path / "mme"
    folder.mkdir()
    table = pa.Table.from_pylist(rows)
    with ipc.new_stream(str(folder / "data-00000-of-00001.arrow"), table.schema) as writer:
        writer.write_table(table)
    items = load_mme_hf(folder)
    (tmp_path / "tool").mkdir()
    paired = [rows[0], rows[2], rows[1], rows[3]]
    (tmp_path / "tool" / "count.txt").write_text(
        "".join(f"{r['question_id'].split('/')[1]}\t{r['question']}\t{r['answer']}\n" for r in paired)
    )
    same_items(items, load_mme(tmp_path / "tool", tmp_path))
    assert [i["id"] for i in items] == ["count/1.jpg/0", "count/1.jpg/1", "count/2.jpg/0", "count/2.jpg/1"]


def test_mmstar_parquet_and_errors(tmp_path):
    row = {
        "index": 7,
        "question": "Which?\nOptions: A: x, B: y, C: z, D: w",
        "image": png((0, 0, 200)),
        "answer": "C",
        "category": "math",
        "l2_category": "geometry",
        "meta_info": {"source": "s"},
    }
    pq.write_table(pa.Table.from_pylist([row]), tmp_path / "val.parquet")
    items = load_mmstar_hf(tmp_path / "val.parquet", image_dir=tmp_path / "imgs")
    (tmp_path / "mmstar.jsonl").write_text(json.dumps(dict(row, image="7.png", meta_info=None)) + "\n")
    same_items(items, load_mmstar(tmp_path / "mmstar.jsonl", tmp_path / "imgs"))

    pq.write_table(pa.Table.from_pylist([{k: v for k, v in row.items() if k != "answer"}]), tmp_path / "bad.parquet")
    with pytest.raises(DataFormatError, match=r"bad.parquet: answer: missing column"):
        load_mmstar_hf(tmp_path / "bad.parquet")
    pq.write_table(pa.Table.from_pylist([dict(row, answer="E")]), tmp_path / "e.parquet")
    with pytest.raises(DataFormatError, match=r"e.parquet:1: answer: expected one of"):
        load_mmstar_hf(tmp_path / "e.parquet")
    with pytest.raises(FileNotFoundError, match="hf download"):
        load_pope_hf(tmp_path / "missing")


@pytest.mark.parametrize(
    ("load", "columns"),
    [
        (load_pope_hf, ("question_id", "question", "answer", "image_source", "image", "category")),
        (load_mme_hf, ("question_id", "image", "question", "answer", "category")),
        (load_mmstar_hf, ("index", "question", "image", "answer", "category", "l2_category")),
    ],
)
def test_a_table_without_rows_is_an_error(tmp_path, load, columns):
    """Every column present, no row: an evaluation would otherwise run on nothing and succeed."""
    pq.write_table(pa.table({c: pa.array([], pa.string()) for c in columns}), tmp_path / "test.parquet")
    with pytest.raises(DataFormatError) as error:
        load(tmp_path)
    assert str(error.value) == f"{tmp_path / 'test.parquet'}: <file>: no questions: the file holds none"
