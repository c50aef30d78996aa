"""POPE: its question files (`*_pope_<category>.json`, JSON lines) and `lmms-lab/POPE`, its yes/no parsing per
parser, and its metrics (docs/benchmarks.md#pope)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from sinkflow.benchmarks.base import Benchmark, Parser
from sinkflow.benchmarks.common import SHORT_ANSWER, short_answer_prompt
from sinkflow.benchmarks.hf_layout import image_folder, read_rows, save_image
from sinkflow.benchmarks.yes_no import yes_no_vlmevalkit
from sinkflow.data.errors import DataFormatError
from sinkflow.data.files import field, image_path, read_jsonl

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
    paths: str | Path | Sequence[str | Path],
    image_root: str | Path,
    check_images: bool = False,
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
            raise DataFormatError(
                path, None, "<file name>", f"expected *_pope_<category>.json with category in {CATEGORIES}"
            )
        for line_no, obj in read_jsonl(path):
            items.append(pope_item(obj, category, path, line_no, root, check_images, suffix, seen))
    return items


def pope_item(
    obj: dict,
    category: str,
    path: Path,
    line_no: int,
    root: Path,
    check_images: bool,
    suffix: str,
    seen: dict[str, tuple[Path, int]],
) -> dict:
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
        raise DataFormatError(
            path, line_no, "question_id", f"duplicate id {item_id!r} (first at {first[0]}:{first[1]})"
        )
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


def load_pope_hf(path: str | Path, image_dir: str | Path | None = None, suffix: str = SHORT_ANSWER) -> list[dict]:
    """`lmms-lab/POPE`: columns `question_id` (restarts per category), `question`, `answer`, `image_source`,
    `image`, `category`; ids are `<category>/<question_id>` as for the original files."""
    folder, items, seen = image_folder(path, image_dir), [], {}
    for file, row, obj in read_rows(path, ("question_id", "question", "answer", "image_source", "image", "category")):
        if not str(obj["question_id"]).isdigit():
            raise DataFormatError(file, row, "question_id", f"expected an integer, got {obj['question_id']!r}")
        image = save_image(obj["image"], folder, f"{obj['image_source']}.jpg", file, row)
        line = {"question_id": int(obj["question_id"]), "image": image, "text": obj["question"], "label": obj["answer"]}
        items.append(pope_item(line, obj["category"], file, row, folder.resolve(), False, suffix, seen))
    return items


def parse_pope(text: str, parser: Parser = "official") -> str | None:
    """POPE yes/no. `official`: anything without the words No / not / no (before the first period) is yes."""
    if parser == "official":
        if "." in text:
            text = text.split(".")[0]
        words = text.replace(",", "").split(" ")
        return "no" if any(w in ("No", "not", "no") for w in words) else "yes"
    if parser == "lmms_eval":
        pred = text.lower().strip()
        return pred if pred in ("yes", "no") else None
    return yes_no_vlmevalkit(text)


class POPE(Benchmark, name="pope"):
    """Per category accuracy, precision, recall, F1 (yes = positive) and yes-ratio of the predictions; mean F1."""

    fields = ("category",)
    values = {"category": CATEGORIES, "answer": ("yes", "no")}

    @staticmethod
    def correct(record: dict, parser: Parser) -> bool:
        return parse_pope(record["prediction"], parser) == str(record["answer"]).lower()

    @classmethod
    def score(cls, records: list[dict], parser: Parser) -> dict[str, float]:
        by_category: dict[str, list[tuple[str, str | None]]] = {category: [] for category in CATEGORIES}
        for record in records:
            answer = str(record["answer"]).lower()
            if answer not in ("yes", "no"):
                raise ValueError(f"POPE record {record['id']!r}: answer must be yes or no, got {record['answer']!r}")
            if record["category"] not in by_category:
                raise ValueError(f"unknown POPE category {record['category']!r}; expected one of {CATEGORIES}")
            by_category[record["category"]].append((answer, parse_pope(record["prediction"], parser)))
        out, f1s = {}, []
        for category, pairs in by_category.items():
            if not pairs:
                continue
            tp = sum(pred == "yes" and gt == "yes" for gt, pred in pairs)
            fp = sum(pred == "yes" and gt == "no" for gt, pred in pairs)
            fn = sum(pred == "no" and gt == "yes" for gt, pred in pairs)  # unparseable answers are in no cell
            precision = tp / (tp + fp) if tp + fp else 0.0
            recall = tp / (tp + fn) if tp + fn else 0.0
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            out.update(
                {
                    f"pope/{category}/accuracy": sum(pred == gt for gt, pred in pairs) / len(pairs),
                    f"pope/{category}/precision": precision,
                    f"pope/{category}/recall": recall,
                    f"pope/{category}/f1": f1,
                    f"pope/{category}/yes_ratio": sum(pred == "yes" for _, pred in pairs) / len(pairs),
                }
            )
            f1s.append(f1)
        if f1s:
            out["pope/f1_mean"] = sum(f1s) / len(f1s)
        return out
