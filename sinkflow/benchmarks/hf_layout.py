"""Reading a benchmark saved locally in its Hugging Face layout (each benchmark's `load_<name>_hf` builds on this).

`path` is a parquet file, a folder of them (a hub snapshot such as `lmms-lab/POPE`), or a `save_to_disk` folder
(`*.arrow`). Embedded images are written once to `image_dir` (default: `<path>_images` beside the data) so that
evaluation reads them like any other image file. Rows go through the same checks and item builders as the
original releases, with the row number as the line in error messages.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from sinkflow.data.errors import DataFormatError
from sinkflow.data.files import question_rows


def data_files(path: Path) -> list[Path]:
    """The parquet or arrow files of a dataset path."""
    if not path.exists():
        raise FileNotFoundError(
            f"Hugging Face dataset not found: {path} (a .parquet file, a folder of parquet "
            "files, or a datasets.save_to_disk folder); e.g. `hf download <repo> "
            "--repo-type dataset --local-dir <path>`"
        )
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


def save_image(cell: object, folder: Path, name: str, file: Path, row: int) -> str:
    """Write an embedded image (`{"bytes": ..., "path": ...}`) to `folder/name` once; return the name."""
    if not isinstance(cell, dict) or not cell.get("bytes"):
        raise DataFormatError(file, row, "image", "expected an embedded image (bytes)")
    target = folder / name
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(cell["bytes"])
    return name


def image_folder(path: str | Path, image_dir: str | Path | None) -> Path:
    """Where a dataset's embedded images are written: `image_dir`, else `<path>_images` beside the data."""
    return Path(image_dir) if image_dir else Path(path).with_name(Path(path).name + "_images")
