"""MMStar: JSON lines (the `Lin-Chen/MMStar` columns, with the image as a file name) and `Lin-Chen/MMStar` itself,
its answer checks per parser, and its micro / macro accuracies (docs/benchmarks.md#mmstar)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from sinkflow.benchmarks.base import Benchmark, Parser
from sinkflow.benchmarks.hf_layout import image_folder, read_rows, save_image
from sinkflow.benchmarks.multiple_choice import choice_vlmevalkit
from sinkflow.data.errors import DataFormatError
from sinkflow.data.files import field, image_path, read_jsonl

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


def load_mmstar(
    path: str | Path, image_root: str | Path, check_images: bool = False, suffix: str = LETTER_ANSWER
) -> list[dict]:
    """Load MMStar questions from a JSON-lines file as evaluation items."""
    path, root = Path(path), Path(image_root).resolve()
    if not path.is_file():
        raise FileNotFoundError(
            f"MMStar questions not found: {path} (JSON lines of index, question, image, answer, category, l2_category)"
        )
    seen: dict[int, int] = {}
    return [mmstar_item(obj, path, line_no, root, check_images, suffix, seen) for line_no, obj in read_jsonl(path)]


def mmstar_item(
    obj: dict, path: Path, line_no: int, root: Path, check_images: bool, suffix: str, seen: dict[int, int]
) -> dict:
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
        raise DataFormatError(
            path,
            line_no,
            "l2_category",
            f"expected one of {CATEGORIES[category]} for {category!r}, got {l2_category!r}",
        )
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


def load_mmstar_hf(path: str | Path, image_dir: str | Path | None = None, suffix: str = LETTER_ANSWER) -> list[dict]:
    """`Lin-Chen/MMStar` (split `val`): columns `index`, `question`, `image`, `answer`, `category`, `l2_category`."""
    folder, items, seen = image_folder(path, image_dir), [], {}
    for file, row, obj in read_rows(path, ("index", "question", "image", "answer", "category", "l2_category")):
        image = save_image(obj["image"], folder, f"{obj['index']}.png", file, row)
        items.append(mmstar_item(dict(obj, image=image), file, row, folder.resolve(), False, suffix, seen))
    return items


_OFFICIAL_PREFIXES = ("(", "option ", "the answer is ")


def mmstar_official_correct(text: str, answer: str) -> bool:
    """MMStar's official check: lower-cased, stripped, newlines as spaces; the letter first, after '(',
    'option ' or 'the answer is '. An empty response is wrong."""
    pred = text.lower().strip().replace("\n", " ")
    ans = answer.lower().strip().replace("\n", " ")
    if not pred:
        return False
    if pred[0] == ans:
        return True
    return any(pred.startswith(p) and len(pred) > len(p) and pred[len(p)] == ans for p in _OFFICIAL_PREFIXES)


_PHRASES = re.compile(
    r"(?:the answer is|answer is|the correct answer is|i choose|i select|i pick)\s*\(?([A-D])\b", re.IGNORECASE
)
# (pattern, priority): lmms-eval's tiers as documented in docs/benchmarks.md#mmstar-parsing; letters are case-sensitive.
_TIERS = (
    (re.compile(r"^([A-D])\b"), 10),
    (re.compile(r"\b([A-D])$"), 9),
    (_PHRASES, 7),
    (re.compile(r"\(([A-D])\)"), 6),
    (re.compile(r"\b([A-D])\."), 5),
    (re.compile(r"\b([A-D]):"), 4),
    (re.compile(r"\b([A-D])\)"), 3),
    (re.compile(r"\b([A-D]) "), 2),
)


def mmstar_lmms_eval_letter(text: str) -> str:
    """lmms-eval's MCQ extraction (A-D, case-sensitive): the highest tier wins, the later match within a tier;
    else any occurrence of a letter; else ""."""
    stripped = text.strip().strip(".,;:!?()[]{}\"' \n")
    best: tuple[int, int, str] | None = None
    for pattern, priority in _TIERS:
        for match in pattern.finditer(stripped):
            candidate = (priority, match.start(1), match.group(1))
            best = candidate if best is None or candidate[:2] > best[:2] else best
    if best is not None:
        return best[2]
    anywhere = re.search(r"[A-D]", stripped)
    return anywhere.group() if anywhere else ""


def mmstar_options(question: str) -> dict[str, str]:
    """Option texts of an MMStar question (`Options: A: ..., B: ..., ...`)."""
    if "Options:" not in question:
        return {}
    tail = question.split("Options:", 1)[1]
    parts = re.split(r"(?:^|,\s*)([A-D]):\s*", tail.strip())
    return {parts[i]: parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}


class MMStar(Benchmark, name="mmstar"):
    """Accuracy per core category, per sub-category and overall: micro (official, denominators from the data);
    under the `lmms_eval` parser its macro means (core = mean over its sub-categories; `mmstar/average`)."""

    fields = ("category", "l2_category")
    values = {"category": tuple(CATEGORIES)}

    @staticmethod
    def correct(record: dict, parser: Parser) -> bool:
        if parser == "official":
            return mmstar_official_correct(record["prediction"], record["answer"])
        if parser == "lmms_eval":
            return mmstar_lmms_eval_letter(record["prediction"]) == record["answer"]
        return choice_vlmevalkit(record["prediction"], mmstar_options(record["question"])) == record["answer"]

    @classmethod
    def record_problem(cls, record: dict) -> tuple[str, str] | None:
        problem = super().record_problem(record)
        core, l2 = record["category"], record["l2_category"]
        if problem is None and l2 not in CATEGORIES[core]:
            return "l2_category", f"expected one of {CATEGORIES[core]} for {core!r}, got {l2!r}"
        return problem

    @classmethod
    def score(cls, records: list[dict], parser: Parser) -> dict[str, float]:
        # core -> sub-category -> whether each question is right, in the official order of both
        right: dict[str, dict[str, list[bool]]] = {core: {l2: [] for l2 in l2s} for core, l2s in CATEGORIES.items()}
        for record in records:
            core, l2 = record["category"], record["l2_category"]
            if core not in right:
                raise ValueError(f"unknown MMStar category {core!r}; expected one of {tuple(CATEGORIES)}")
            if l2 not in right[core]:
                raise ValueError(f"unknown MMStar l2_category {l2!r} for {core!r}; expected one of {CATEGORIES[core]}")
            right[core][l2].append(cls.correct(record, parser))
        out, l2_means = {}, []
        for core, by_l2 in right.items():
            core_means = []
            for l2, hits in by_l2.items():
                if hits:
                    # A float32 mean, as these keys have always been computed (earlier results stay comparable).
                    core_means.append(float(np.float32(sum(hits)) / np.float32(len(hits))))
                    out[f"mmstar/{core}/{l2}/accuracy"] = core_means[-1]
            hits = [hit for by in by_l2.values() for hit in by]
            if hits:
                macro = parser == "lmms_eval"
                out[f"mmstar/{core}/accuracy"] = sum(core_means) / len(core_means) if macro else sum(hits) / len(hits)
            l2_means += core_means
        every = [hit for by_l2 in right.values() for hits in by_l2.values() for hit in hits]
        if every:
            out["mmstar/overall"] = sum(every) / len(every)
            if parser == "lmms_eval":
                out["mmstar/average"] = sum(l2_means) / len(l2_means)
        return out
