"""GQA testdev-balanced: the release's question file (`testdev_balanced_questions.json` + `images/<imageId>.jpg`) and
`lmms-lab/GQA` (two parquet configs joined by image id), its exact-match rules per parser, and its accuracies
overall, per answer kind and per question type (docs/benchmarks.md#gqa)."""

from __future__ import annotations

import json
import string
from functools import partial
from pathlib import Path

from sinkflow.benchmarks.base import Benchmark, Parser, accuracies
from sinkflow.benchmarks.common import SHORT_ANSWER, short_answer_prompt
from sinkflow.benchmarks.hf_layout import image_folder, read_rows, save_image
from sinkflow.data.errors import DataFormatError
from sinkflow.data.files import field, image_path, question_rows

# The reasoning structure of a question, and what it is about (GQA's `types.structural` / `types.semantic`).
STRUCTURAL = ("verify", "query", "choose", "logical", "compare")
SEMANTIC = ("obj", "attr", "rel", "cat", "global")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def _where(question_id: str) -> str:
    """A question's place in the file, for errors: the release is one JSON object, so no line says it."""
    return f"question {question_id}"


def gqa_item(
    question_id: str,
    obj: dict,
    path: Path,
    where: int | str,
    root: Path,
    check_images: bool,
    suffix: str,
    image_ext: str,
) -> dict:
    """One GQA question (`imageId`, `question`, `answer`, `types` with `structural`, `semantic`, `detailed`) as an
    evaluation item; `where` names its place in `path` in errors."""
    image_id = field(obj, "imageId", str, path, where)
    question = field(obj, "question", str, path, where)
    answer = field(obj, "answer", str, path, where)
    types = field(obj, "types", dict, path, where)
    for name, allowed in (("structural", STRUCTURAL), ("semantic", SEMANTIC)):
        if types.get(name) not in allowed:
            raise DataFormatError(path, where, f"types.{name}", f"expected one of {allowed}, got {types.get(name)!r}")
    image = image_id + image_ext
    return {
        "benchmark": "gqa",
        "id": question_id,
        "image_id": image_id,
        "question": question,
        "answer": answer,
        "structural": types["structural"],
        "semantic": types["semantic"],
        "detailed": str(types.get("detailed") or ""),
        "image": image,
        "image_path": image_path(root, image, check_images, path, where),
        "prompt": short_answer_prompt(question, suffix),
    }


def _unique_keys(path: Path, pairs: list[tuple[str, object]]) -> dict:
    """A JSON object whose keys are all distinct (`json` would keep the last of a repeated question id)."""
    obj: dict = {}
    for key, value in pairs:
        if key in obj:
            raise DataFormatError(path, None, "<json>", f"key {key!r} appears twice in one object")
        obj[key] = value
    return obj


def _balanced(obj: dict, path: Path, where: int | str) -> bool:
    """Whether a question counts: the official script scores only `isBalanced` ones (all of testdev-balanced)."""
    balanced = obj.get("isBalanced", True)
    if not isinstance(balanced, bool):
        raise DataFormatError(path, where, "isBalanced", f"expected true or false, got {balanced!r}")
    return balanced


def _some(items: list[dict], path: Path) -> list[dict]:
    """The items, of which there must be some: a file of unbalanced questions only would evaluate nothing."""
    if not items:
        raise DataFormatError(path, None, "isBalanced", "no balanced question: the official score counts none")
    return items


def load_gqa(
    path: str | Path,
    image_root: str | Path,
    check_images: bool = False,
    suffix: str = SHORT_ANSWER,
    image_ext: str = ".jpg",
) -> list[dict]:
    """Load a GQA question file (one JSON object: question id -> question) as evaluation items, in file order;
    the image of a question is `<image_root>/<imageId><image_ext>`. Unbalanced questions are left out."""
    path, root = Path(path), Path(image_root).resolve()
    if not path.is_file():
        raise FileNotFoundError(
            f"GQA questions not found: {path} (testdev_balanced_questions.json: question id -> imageId, question, "
            "answer, types)"
        )
    try:
        questions = json.loads(path.read_text(encoding="utf-8-sig"), object_pairs_hook=partial(_unique_keys, path))
    except json.JSONDecodeError as err:
        raise DataFormatError(path, err.lineno, "<json>", f"expected a JSON object ({err.msg})") from None
    except UnicodeDecodeError as err:
        raise DataFormatError(
            path, None, "<encoding>", f"expected UTF-8 text, got byte {err.object[err.start]:#04x}"
        ) from None
    if not isinstance(questions, dict):
        raise DataFormatError(path, None, "<json>", f"expected an object of questions, got {type(questions).__name__}")
    items = []
    for question_id, obj in question_rows(path, questions.items()):
        if not isinstance(obj, dict):
            raise DataFormatError(path, _where(question_id), "<question>", f"expected an object, got {obj!r}")
        if _balanced(obj, path, _where(question_id)):
            items.append(gqa_item(question_id, obj, path, _where(question_id), root, check_images, suffix, image_ext))
    return _some(items, path)


def load_gqa_hf(
    instructions: str | Path, images: str | Path, image_dir: str | Path | None = None, suffix: str = SHORT_ANSWER
) -> list[dict]:
    """`lmms-lab/GQA`: config `testdev_balanced_instructions` (columns `id`, `imageId`, `question`, `answer`,
    `types`, ...) joined on `imageId` with `testdev_balanced_images` (`id`, `image`), as lmms-eval joins them;
    each image is written once as `<imageId>.jpg`, so items equal the release's."""
    image_rows = {}
    for file, row, obj in read_rows(images, ("id", "image")):
        image_rows.setdefault(str(obj["id"]), (obj["image"], file, row))
    folder, items, seen = image_folder(images, image_dir), [], {}
    for file, row, obj in read_rows(instructions, ("id", "imageId", "question", "answer", "types")):
        question_id = str(obj["id"])
        if question_id in seen:
            raise DataFormatError(
                file, row, "id", f"duplicate question id {question_id!r} (first at row {seen[question_id]})"
            )
        seen[question_id] = row
        if not _balanced(obj, file, row):
            continue
        item = gqa_item(question_id, obj, file, row, folder.resolve(), False, suffix, ".jpg")
        if item["image_id"] not in image_rows:
            raise DataFormatError(file, row, "imageId", f"no image with id {item['image_id']!r} in {images}")
        cell, image_file, image_row = image_rows[item["image_id"]]
        save_image(cell, folder, item["image"], image_file, image_row)
        items.append(item)
    return _some(items, Path(instructions))


def gqa_correct(prediction: str, answer: str, parser: Parser = "official") -> bool:
    """Whether a prediction matches GQA's answer.

    `official`: LLaVA's conversion for the GQA script (the generation stripped, trailing periods removed,
    lower-cased), then the script's `prediction == answer`. `lmms_eval`: its `exact_match` with ignore_case and
    ignore_punctuation (the generation stripped; both lower-cased, every ASCII punctuation mark deleted).
    `vlmevalkit`: its `accuracy` method (both stripped and lower-cased)."""
    if parser == "official":
        return prediction.strip().rstrip(".").lower() == answer
    if parser == "lmms_eval":
        return prediction.strip().lower().translate(_PUNCTUATION) == answer.lower().translate(_PUNCTUATION)
    return prediction.strip().lower() == answer.strip().lower()


class GQA(Benchmark, name="gqa"):
    """`gqa/overall`, `gqa/{binary,open}/accuracy` (open = structural type `query`) and `gqa/<type>/accuracy` for
    each structural and semantic type present, as the official script's accuracy lines (fractions, not percent)."""

    fields = ("structural", "semantic")
    values = {"structural": STRUCTURAL, "semantic": SEMANTIC}

    @staticmethod
    def correct(record: dict, parser: Parser) -> bool:
        return gqa_correct(record["prediction"], record["answer"], parser)

    @classmethod
    def score(cls, records: list[dict], parser: Parser) -> dict[str, float]:
        hits = []
        for record in records:
            problem = cls.record_problem(record)
            if problem:
                raise ValueError(f"GQA record {record['id']!r}: {problem[0]}: {problem[1]}")
            right, structural = cls.correct(record, parser), record["structural"]
            kind = "open" if structural == "query" else "binary"
            for key in ("overall", f"{kind}/accuracy", f"{structural}/accuracy", f"{record['semantic']}/accuracy"):
                hits.append((f"gqa/{key}", right))
        return accuracies(hits)
