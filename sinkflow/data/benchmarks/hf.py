"""POPE, MME and MMStar from their Hugging Face layouts saved locally (the data sections of docs/benchmarks.md).

`path` is a parquet file, a folder of them (a hub snapshot such as `lmms-lab/POPE`), or a `save_to_disk` folder
(`*.arrow`). Embedded images are written once to `image_dir` (default: `<path>_images` beside the data) so that
evaluation reads them like any other image file. Rows go through the same checks and item builders as the
original releases, with the row number as the line in error messages.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from sinkflow.data.benchmarks.common import SHORT_ANSWER, question_rows
from sinkflow.data.benchmarks.mme import SUBTASKS, mme_items
from sinkflow.data.benchmarks.mmstar import LETTER_ANSWER, mmstar_item
from sinkflow.data.benchmarks.pope import pope_item
from sinkflow.data.errors import DataFormatError


def data_files(path: Path) -> list[Path]:
    """The parquet or arrow files of a dataset path."""
    if not path.exists():
        raise FileNotFoundError(f"Hugging Face dataset not found: {path} (a .parquet file, a folder of parquet "
                                "files, or a datasets.save_to_disk folder); e.g. `hf download <repo> "
                                "--repo-type dataset --local-dir <path>`")
    if path.is_file():
        return [path]
    files = sorted(path.rglob("*.parquet")) or sorted(f for f in path.rglob("*.arrow") if "cache-" not in f.name)
    if not files:
        raise DataFormatError(path, None, "<files>", "expected *.parquet or save_to_disk *.arrow files")
    return files


def read_rows(path: str | Path, columns: tuple[str, ...]) -> list[tuple[Path, int, dict]]:
    """(file, 1-based row, row) for every row of the dataset, checking that `columns` exist and that no file is
    empty."""
    rows = []
    for file in data_files(Path(path)):
        if file.suffix == ".parquet":
            table = pq.read_table(file)
        else:
            with pa.memory_map(str(file)) as source:
                table = ipc.open_stream(source).read_all()
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            raise DataFormatError(file, None, ", ".join(missing), f"missing column(s); has {table.column_names}")
        rows += question_rows(file, ((file, i + 1, row) for i, row in enumerate(table.to_pylist())))
    return rows


def save_image(cell, folder: Path, name: str, file: Path, row: int) -> str:
    """Write an embedded image (`{"bytes": ..., "path": ...}`) to `folder/name` once; return the name."""
    if not isinstance(cell, dict) or not cell.get("bytes"):
        raise DataFormatError(file, row, "image", "expected an embedded image (bytes)")
    target = folder / name
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(cell["bytes"])
    return name


def image_folder(path: str | Path, image_dir: str | Path | None) -> Path:
    return Path(image_dir) if image_dir else Path(path).with_name(Path(path).name + "_images")


def load_pope_hf(path: str | Path, image_dir: str | Path | None = None, suffix: str = SHORT_ANSWER) -> list[dict]:
    """`lmms-lab/POPE`: columns `question_id` (restarts per category), `question`, `answer`, `image_source`,
    `image`, `category`; ids are `<category>/<question_id>` as for the original files."""
    folder, items, seen = image_folder(path, image_dir), [], {}
    for file, row, obj in read_rows(path, ("question_id", "question", "answer", "image_source", "image", "category")):
        if not str(obj["question_id"]).isdigit():
            raise DataFormatError(file, row, "question_id", f"expected an integer, got {obj['question_id']!r}")
        image = save_image(obj["image"], folder, f"{obj['image_source']}.jpg", file, row)
        line = {"question_id": int(obj["question_id"]), "image": image, "text": obj["question"],
                "label": obj["answer"]}
        items.append(pope_item(line, obj["category"], file, row, folder.resolve(), False, suffix, seen))
    return items


def load_mme_hf(path: str | Path, image_dir: str | Path | None = None, suffix: str = SHORT_ANSWER) -> list[dict]:
    """`lmms-lab/MME`: columns `question_id` (= `<category>/<image>`, shared by an image's two questions),
    `image`, `question`, `answer`, `category`; ids and pairing as for the official tool layout."""
    folder = image_folder(path, image_dir)
    by_subtask: dict[str, dict[str, list[tuple]]] = defaultdict(dict)
    where: dict[str, Path] = {}
    for file, row, obj in read_rows(path, ("question_id", "image", "question", "answer", "category")):
        subtask = obj["category"]
        if subtask not in SUBTASKS:
            raise DataFormatError(file, row, "category", f"expected one of the 14 MME subtasks, got {subtask!r}")
        image = str(obj["question_id"]).split("/", 1)[-1]
        if image not in by_subtask[subtask]:
            save_image(obj["image"], folder / subtask, image, file, row)
            by_subtask[subtask][image] = []
        by_subtask[subtask][image].append((row, image, obj["question"], obj["answer"], None))
        where[subtask] = file
    root = folder.resolve()
    return [item for subtask in SUBTASKS if subtask in by_subtask
            for item in mme_items(where[subtask], subtask, [r for pair in by_subtask[subtask].values() for r in pair],
                                  root, False, suffix)]


def load_mmstar_hf(path: str | Path, image_dir: str | Path | None = None, suffix: str = LETTER_ANSWER) -> list[dict]:
    """`Lin-Chen/MMStar` (split `val`): columns `index`, `question`, `image`, `answer`, `category`, `l2_category`."""
    folder, items, seen = image_folder(path, image_dir), [], {}
    for file, row, obj in read_rows(path, ("index", "question", "image", "answer", "category", "l2_category")):
        image = save_image(obj["image"], folder, f"{obj['index']}.png", file, row)
        items.append(mmstar_item(dict(obj, image=image), file, row, folder.resolve(), False, suffix, seen))
    return items
