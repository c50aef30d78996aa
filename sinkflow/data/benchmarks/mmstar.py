"""Loader for MMStar as JSON lines (the `Lin-Chen/MMStar` columns, with the image as a file name)."""
from __future__ import annotations

from pathlib import Path

from sinkflow.data.benchmarks.common import field, image_path, read_jsonl
from sinkflow.data.errors import DataFormatError

CATEGORIES = {
    "coarse perception": ("image scene and topic", "image style & quality", "image emotion"),
    "fine-grained perception": ("object counting", "recognition", "localization"),
    "instance reasoning": (
        "single-instance reasoning",
        "cross-instance attribute reasoning",
        "cross-instance relation reasoning",
    ),
    "logical reasoning": ("code & sequence reasoning", "diagram reasoning", "common reasoning"),
    "science & technology": (
        "biology & chemistry & physics",
        "electronics & energy & mechanical eng.",
        "geography & earth science & agriculture",
    ),
    "math": ("geometry", "numeric commonsense and calculation", "statistical reasoning"),
}
LETTERS = ("A", "B", "C", "D")
LETTER_ANSWER = "\nAnswer with the option's letter from the given choices directly."


def letter_prompt(question: str, suffix: str = LETTER_ANSWER) -> str:
    """The model prompt of an MMStar question (options inline): the question, then the letter instruction."""
    return question.strip() + suffix


def load_mmstar(path: str | Path, image_root: str | Path, check_images: bool = False,
                suffix: str = LETTER_ANSWER) -> list[dict]:
    """Load MMStar questions from a JSON-lines file as evaluation items."""
    path, root = Path(path), Path(image_root).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"MMStar questions not found: {path} (JSON lines of index, question, image, answer, "
                                "category, l2_category)")
    seen: dict[int, int] = {}
    return [mmstar_item(obj, path, line_no, root, check_images, suffix, seen) for line_no, obj in read_jsonl(path)]


def mmstar_item(obj: dict, path: Path, line_no: int, root: Path, check_images: bool, suffix: str,
                seen: dict[int, int]) -> dict:
    """One MMStar row (`index`, `question`, `image`, `answer`, `category`, `l2_category`) as an evaluation item."""
    index = field(obj, "index", int, path, line_no)
    question = field(obj, "question", str, path, line_no)
    image = field(obj, "image", str, path, line_no)
    answer = field(obj, "answer", str, path, line_no)
    category = field(obj, "category", str, path, line_no)
    l2_category = field(obj, "l2_category", str, path, line_no)
    if index in seen:
        raise DataFormatError(path, line_no, "index", f"duplicate index {index} (first at line {seen[index]})")
    seen[index] = line_no
    if answer not in LETTERS:
        raise DataFormatError(path, line_no, "answer", f"expected one of {LETTERS}, got {answer!r}")
    if category not in CATEGORIES:
        raise DataFormatError(path, line_no, "category", f"expected one of {tuple(CATEGORIES)}, got {category!r}")
    if l2_category not in CATEGORIES[category]:
        raise DataFormatError(path, line_no, "l2_category",
                              f"expected one of {CATEGORIES[category]} for {category!r}, got {l2_category!r}")
    return {
        "benchmark": "mmstar",
        "id": str(index),
        "index": index,
        "category": category,
        "l2_category": l2_category,
        "question": question,
        "answer": answer,
        "image": image,
        "image_path": image_path(root, image, check_images, path, line_no),
        "prompt": letter_prompt(question, suffix),
    }
