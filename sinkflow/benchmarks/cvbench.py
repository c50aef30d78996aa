"""CV-Bench: the release's JSON lines (`test_2d.jsonl` / `test_3d.jsonl`, or an older single `test.jsonl`, images
under `img/`) and `nyu-visionx/CV-Bench` itself, its letter parsing per parser, and its source-weighted score
(docs/benchmarks.md#cv-bench)."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from sinkflow.benchmarks.base import Benchmark, Parser, accuracies
from sinkflow.benchmarks.hf_layout import image_folder, read_rows, save_image
from sinkflow.benchmarks.mmstar import LETTER_ANSWER
from sinkflow.benchmarks.multiple_choice import choice_vlmevalkit
from sinkflow.checks import choice
from sinkflow.data.errors import DataFormatError
from sinkflow.data.files import field, image_path, read_jsonl

TASKS = {"2D": ("Count", "Relation"), "3D": ("Depth", "Distance")}
SOURCES = {"2D": ("ADE20K", "COCO"), "3D": ("Omni3D",)}
COLUMNS = ("idx", "type", "task", "image", "question", "choices", "answer", "prompt", "filename", "source")
_ANSWER = re.compile(r"\(([A-Z])\)")


def cvbench_prompt(prompt: str, n_choices: int, style: Parser) -> str:
    """The model prompt from the row's `prompt` (question and lettered choices): `official` appends Cambrian-1's
    letter instruction, `lmms_eval` puts its note before it (the letters listed, then an empty line), and
    `vlmevalkit` keeps it as it is."""
    if style == "official":
        return prompt + LETTER_ANSWER
    if style == "lmms_eval":
        letters = ", ".join(chr(ord("A") + i) for i in range(n_choices))
        return (
            f"Note: You only need to respond with {letters} without providing any additional information.\n\n{prompt}"
        )
    return prompt


def choices_problem(choices: object, answer: str) -> tuple[str, str] | None:
    """`(field, what is wrong)` when `choices` is not a list of 2 to 26 strings or `answer` not one of their
    parenthesised letters, else None."""
    if not isinstance(choices, list) or not 2 <= len(choices) <= 26 or not all(isinstance(c, str) for c in choices):
        return "choices", f"expected a list of 2 to 26 strings, got {choices!r}"
    letter = _ANSWER.fullmatch(answer)
    if letter is None or ord(letter.group(1)) - ord("A") >= len(choices):
        return "answer", f"expected '(A)' to '({chr(ord('A') + len(choices) - 1)})', got {answer!r}"
    return None


def _filename(obj: dict, path: Path, line_no: int) -> str:
    """The row's image path relative to the dataset root (the HF loader writes the embedded image there)."""
    name = field(obj, "filename", str, path, line_no)
    if not name or PurePosixPath(name).is_absolute() or ".." in PurePosixPath(name).parts:
        raise DataFormatError(path, line_no, "filename", f"expected a path relative to the dataset root, got {name!r}")
    return name


def cvbench_item(
    obj: dict, path: Path, line_no: int, root: Path, check_images: bool, style: Parser, seen: dict[int, str]
) -> dict:
    """One CV-Bench row as an evaluation item; `category` is the row's task."""
    idx = field(obj, "idx", int, path, line_no)
    kind = field(obj, "type", str, path, line_no)
    task = field(obj, "task", str, path, line_no)
    source = field(obj, "source", str, path, line_no)
    question = field(obj, "question", str, path, line_no)
    prompt = field(obj, "prompt", str, path, line_no)
    choices = field(obj, "choices", list, path, line_no)
    answer = field(obj, "answer", str, path, line_no)
    filename = _filename(obj, path, line_no)
    if kind not in TASKS:
        raise DataFormatError(path, line_no, "type", f"expected one of {tuple(TASKS)}, got {kind!r}")
    if task not in TASKS[kind]:
        raise DataFormatError(path, line_no, "task", f"expected one of {TASKS[kind]} for {kind}, got {task!r}")
    if source not in SOURCES[kind]:
        raise DataFormatError(path, line_no, "source", f"expected one of {SOURCES[kind]} for {kind}, got {source!r}")
    problem = choices_problem(choices, answer)
    if problem:
        raise DataFormatError(path, line_no, *problem)
    if idx in seen:
        raise DataFormatError(path, line_no, "idx", f"duplicate idx {idx} (first at {seen[idx]})")
    seen[idx] = f"{path}:{line_no}"
    item = {
        "benchmark": "cvbench",
        "id": str(idx),
        "idx": idx,
        "type": kind,
        "category": task,
        "source": source,
        "question": question,
        "choices": choices,
        "answer": answer,
        "image": filename,
        "image_path": image_path(root, filename, check_images, path, line_no),
        "prompt": cvbench_prompt(prompt, len(choices), style),
    }
    if isinstance(obj.get("source_dataset"), str):  # which split of the source (the shapes data names itself here)
        item["source_dataset"] = obj["source_dataset"]
    return item


def cvbench_files(path: Path) -> list[Path]:
    """The question files of a release folder: `test_2d.jsonl` and `test_3d.jsonl` (either may be absent), else
    `test.jsonl`; a file path is read alone."""
    if path.is_file():
        return [path]
    split = [path / name for name in ("test_2d.jsonl", "test_3d.jsonl") if (path / name).is_file()]
    if split and (path / "test.jsonl").is_file():
        raise DataFormatError(
            path, None, "<files>", "both test.jsonl and test_2d/test_3d.jsonl hold the questions; point `path` at one"
        )
    if split or (path / "test.jsonl").is_file():
        return split or [path / "test.jsonl"]
    raise DataFormatError(path, None, "<files>", "expected test_2d.jsonl and/or test_3d.jsonl, or test.jsonl")


def load_cvbench(
    path: str | Path,
    image_root: str | Path | None = None,
    check_images: bool = False,
    prompt_style: Parser = "lmms_eval",
) -> list[dict]:
    """Load CV-Bench from its release folder (or one of its JSON-lines files); `filename` is relative to
    `image_root`, by default the folder of the files (where the release's `img/` is)."""
    choice("dataset.eval_sets.cvbench.prompt_style", prompt_style, Parser)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"CV-Bench not found: {path} (a folder with test_2d.jsonl / test_3d.jsonl or test.jsonl, or one of them)"
        )
    files = cvbench_files(path)
    root = Path(image_root if image_root is not None else files[0].parent).resolve()
    seen: dict[int, str] = {}
    return [
        cvbench_item(obj, file, line_no, root, check_images, prompt_style, seen)
        for file in files
        for line_no, obj in read_jsonl(file)
    ]


def load_cvbench_hf(
    path: str | Path, image_dir: str | Path | None = None, prompt_style: Parser = "lmms_eval"
) -> list[dict]:
    """`nyu-visionx/CV-Bench` (`test_2d.parquet` + `test_3d.parquet`, or `test.parquet`): the release's columns
    with the image embedded, written once under its `filename`."""
    choice("dataset.eval_sets.cvbench.prompt_style", prompt_style, Parser)
    folder, items, seen = image_folder(path, image_dir), [], {}
    for file, row, obj in read_rows(path, COLUMNS):
        save_image(obj["image"], folder, _filename(obj, file, row), file, row)
        items.append(cvbench_item(obj, file, row, folder.resolve(), False, prompt_style, seen))
    return items


_OFFICIAL_KEYWORDS = ("answer is", "answer is:", "answer:")


def official_letter(text: str) -> str:
    """Cambrian-1's `extract_mcq_answer` (lower-case): the text after the last "answer is" / "answer:", stripped,
    without a trailing "." and then a leading "(" and a trailing ")"; its first character.
    The 3D script also strips a trailing ":" and ","; only the first character counts and a letter is never
    stripped, so no verdict differs and one rule serves both."""
    text = text.lower().strip()
    for keyword in _OFFICIAL_KEYWORDS:  # in turn, each on what the previous one left
        if keyword in text:
            text = text.split(keyword)[-1]
    return text.strip().rstrip(".").lstrip("(").rstrip(")")[:1]


# Case-insensitive [A-Z] also matches four non-ASCII letters (İ ı ſ K); the same pattern keeps that behaviour.
_LMMS_EVAL = re.compile(r"[\(\s]*([A-Z])[\)\.\s]*", re.IGNORECASE)


def lmms_eval_letter(text: str) -> str:
    """lmms-eval's cv_bench extraction: the letter at the very start (after any "(" and spaces), upper-cased, so
    "The answer is B" reads as "T"; "" when the text does not start with a letter."""
    match = _LMMS_EVAL.match(text.strip())
    return match.group(1).upper() if match else ""


_REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
_SPACED = ".()[],:;!*#{}"
_STATED = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**")


class CVBench(Benchmark, name="cvbench"):
    """Accuracy per source and per task, `cvbench/2d` (mean of ADE20K and COCO), `cvbench/3d` (Omni3D),
    `cvbench/overall` = (2d + 3d) / 2, and the plain accuracy over every question (lmms-eval's number)."""

    fields = ("type", "category", "source")
    values = {
        "type": tuple(TASKS),
        "category": tuple(t for tasks in TASKS.values() for t in tasks),
        "source": tuple(s for sources in SOURCES.values() for s in sources),
    }

    @staticmethod
    def correct(record: dict, parser: Parser) -> bool:
        letter, choices = record["answer"][1], record["choices"]
        if parser == "official":
            pred = official_letter(record["prediction"])
            # The 3D script also accepts the right choice's text, which a one-character reading matches only when
            # that text is a single character.
            return pred == letter.lower() or (record["source"] == "Omni3D" and pred == choices[ord(letter) - ord("A")])
        if parser == "lmms_eval":
            return lmms_eval_letter(record["prediction"]) == letter
        lettered = {chr(ord("A") + i): option for i, option in enumerate(choices)}
        return choice_vlmevalkit(record["prediction"], lettered) == letter

    @classmethod
    def record_problem(cls, record: dict) -> tuple[str, str] | None:
        problem = super().record_problem(record)
        if problem:
            return problem
        kind = record["type"]
        if record["category"] not in TASKS[kind] or record["source"] not in SOURCES[kind]:
            return "type", f"expected tasks {TASKS[kind]} and sources {SOURCES[kind]} for {kind}"
        return choices_problem(record.get("choices"), record["answer"])

    @classmethod
    def score(cls, records: list[dict], parser: Parser) -> dict[str, float]:
        hits = []
        for record in records:
            if record["source"] not in cls.values["source"] or record["category"] not in cls.values["category"]:
                raise ValueError(
                    f"CV-Bench record {record['id']!r}: unknown source {record['source']!r} or task "
                    f"{record['category']!r}; expected {SOURCES} and {TASKS}"
                )
            right = cls.correct(record, parser)
            hits += [
                ("cvbench/accuracy", right),
                (f"cvbench/{record['source'].lower()}/accuracy", right),
                (f"cvbench/{record['category'].lower()}/accuracy", right),
            ]
        out = accuracies(hits)
        two_d = [out[key] for s in SOURCES["2D"] if (key := f"cvbench/{s.lower()}/accuracy") in out]
        if two_d:
            out["cvbench/2d"] = sum(two_d) / len(two_d)
        if "cvbench/omni3d/accuracy" in out:
            out["cvbench/3d"] = out["cvbench/omni3d/accuracy"]
        if "cvbench/2d" in out and "cvbench/3d" in out:
            out["cvbench/overall"] = (out["cvbench/2d"] + out["cvbench/3d"]) / 2
        return out
