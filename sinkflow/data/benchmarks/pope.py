"""Loader for POPE question files (`*_pope_<category>.json`, JSON lines)."""
from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from sinkflow.data.benchmarks.common import SHORT_ANSWER, field, image_path, read_jsonl, short_answer_prompt
from sinkflow.data.errors import DataFormatError

CATEGORIES = ("random", "popular", "adversarial")
_NAME = re.compile(r"_pope_([a-z]+)\.json$")


def pope_files(directory: str | Path) -> list[Path]:
    """The POPE question files of a directory, in the order random, popular, adversarial."""
    files = [p for p in Path(directory).glob("*_pope_*.json") if _NAME.search(p.name)]
    if not files:
        raise DataFormatError(directory, None, "<files>", "expected files named *_pope_<category>.json")
    order = {c: i for i, c in enumerate(CATEGORIES)}
    return sorted(files, key=lambda p: (order.get(_NAME.search(p.name).group(1), len(order)), p.name))


def load_pope(
    paths: str | Path | Sequence[str | Path], image_root: str | Path, check_images: bool = False,
    suffix: str = SHORT_ANSWER,
) -> list[dict]:
    """Load POPE questions from a directory or a list of files as evaluation items."""
    if isinstance(paths, (str, Path)):
        if not Path(paths).exists():
            raise FileNotFoundError(f"POPE questions not found: {paths} (a directory of *_pope_<category>.json)")
        files = pope_files(paths) if Path(paths).is_dir() else [Path(paths)]
    else:
        files = [Path(p) for p in paths]
    root = Path(image_root).resolve()
    items: list[dict] = []
    seen: dict[str, tuple[Path, int]] = {}
    for path in files:
        match = _NAME.search(path.name)
        category = match.group(1) if match else None
        if category not in CATEGORIES:
            raise DataFormatError(path, None, "<file name>",
                                  f"expected *_pope_<category>.json with category in {CATEGORIES}")
        for line_no, obj in read_jsonl(path):
            items.append(pope_item(obj, category, path, line_no, root, check_images, suffix, seen))
    return items


def pope_item(obj: dict, category: str, path: Path, line_no: int, root: Path, check_images: bool, suffix: str,
              seen: dict[str, tuple[Path, int]]) -> dict:
    """One POPE question (`question_id`, `image`, `text`, `label`) of `category` as an evaluation item."""
    if category not in CATEGORIES:
        raise DataFormatError(path, line_no, "category", f"expected one of {CATEGORIES}, got {category!r}")
    question_id = field(obj, "question_id", int, path, line_no)
    image = field(obj, "image", str, path, line_no)
    text = field(obj, "text", str, path, line_no)
    label = field(obj, "label", str, path, line_no)
    if label not in ("yes", "no"):
        raise DataFormatError(path, line_no, "label", f"expected 'yes' or 'no', got {label!r}")
    item_id = f"{category}/{question_id}"
    if item_id in seen:
        first = seen[item_id]
        raise DataFormatError(path, line_no, "question_id",
                              f"duplicate id {item_id!r} (first at {first[0]}:{first[1]})")
    seen[item_id] = (path, line_no)
    return {
        "benchmark": "pope",
        "id": item_id,
        "question_id": question_id,
        "category": category,
        "question": text,
        "answer": label,
        "image": image,
        "image_path": image_path(root, image, check_images, path, line_no),
        "prompt": short_answer_prompt(text, suffix),
    }
