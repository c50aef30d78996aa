"""ScienceQA-IMG: the test questions of ScienceQA that have an image, from the release (`problems.json`,
`pid_splits.json`, `images/test/<id>/image.png`) or `lmms-lab/ScienceQA` (config `ScienceQA-IMG`); its answer
checks per parser, and the ScienceQA paper's accuracies by subject, text context and grade band
(docs/benchmarks.md#scienceqa-img)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from sinkflow.benchmarks.base import Benchmark, Parser, accuracies
from sinkflow.benchmarks.hf_layout import data_files, image_folder, read_rows, save_image
from sinkflow.benchmarks.mmstar import LETTER_ANSWER
from sinkflow.benchmarks.multiple_choice import choice_vlmevalkit
from sinkflow.data.errors import DataFormatError
from sinkflow.data.files import field, image_path

SPLIT = "test"
# The paper's column names for the three subjects.
SUBJECTS = {"natural science": "NAT", "social science": "SOC", "language science": "LAN"}
GRADES = tuple(f"grade{n}" for n in range(1, 13))
# The letters LLaVA's scorer knows; ScienceQA questions have 2 to 5 choices.
OPTIONS = ("A", "B", "C", "D", "E")
HF_COLUMNS = ("image", "question", "choices", "answer", "hint", "grade", "subject", "topic", "category", "skill")


def scienceqa_prompt(question: str, choices: list[str], hint: str, suffix: str = LETTER_ANSWER) -> str:
    """lmms-eval's prompt: `Context: <hint>` when there is one, the question, one `X. choice` line per choice, then
    the letter instruction."""
    context = f"Context: {hint}\n" if hint else ""
    lines = "\n".join(f"{OPTIONS[i]}. {choice}" for i, choice in enumerate(choices))
    return f"{context}{question}\n{lines}{suffix}"


def scienceqa_item(
    item_id: str, problem: dict, path: Path, line: int, image: str, full_image: str, suffix: str
) -> dict:
    """One problem (the release's fields, or the same columns of the Hugging Face layout) as an evaluation item."""
    question = field(problem, "question", str, path, line)
    choices = field(problem, "choices", list, path, line)
    if not 2 <= len(choices) <= len(OPTIONS) or not all(isinstance(c, str) for c in choices):
        raise DataFormatError(path, line, "choices", f"expected 2 to {len(OPTIONS)} strings, got {choices!r}")
    answer = field(problem, "answer", int, path, line)
    if not 0 <= answer < len(choices):
        raise DataFormatError(path, line, "answer", f"expected a choice index 0..{len(choices) - 1}, got {answer}")
    subject = field(problem, "subject", str, path, line)
    if subject not in SUBJECTS:
        raise DataFormatError(path, line, "subject", f"expected one of {tuple(SUBJECTS)}, got {subject!r}")
    grade = field(problem, "grade", str, path, line)
    if grade not in GRADES:
        raise DataFormatError(path, line, "grade", f"expected grade1 .. grade12, got {grade!r}")
    hint = field(problem, "hint", str, path, line)
    return {
        "benchmark": "scienceqa_img",
        "id": item_id,
        "question": question,
        "hint": hint,
        "choices": choices,
        "answer": OPTIONS[answer],
        "subject": subject,
        "grade": grade,
        **{name: field(problem, name, str, path, line) for name in ("topic", "category", "skill")},
        "image": image,
        "image_path": full_image,
        "prompt": scienceqa_prompt(question, choices, hint, suffix),
    }


_SPACE = re.compile(r"[ \t\n\r]*")


def numbered_problems(path: Path) -> dict[str, tuple[int, object]]:
    """The members of a JSON object file, each with the line its value starts on, so that errors name the line of
    the problem whatever the file's layout."""
    text = path.read_text(encoding="utf-8-sig")
    try:
        problems = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataFormatError(path, err.lineno, "<json>", f"expected a JSON object ({err.msg})") from None
    if not isinstance(problems, dict):
        raise DataFormatError(path, None, "<json>", f"expected an object of problems, got {type(problems).__name__}")
    # Walk the members of the (valid) object once more, counting lines up to each value.
    decoder, lines, line, counted = json.JSONDecoder(), {}, 1, 0
    pos = _SPACE.match(text, text.index("{") + 1).end()
    while text[pos] != "}":
        key, pos = decoder.raw_decode(text, pos)
        pos = _SPACE.match(text, _SPACE.match(text, pos).end() + 1).end()  # past the colon
        line, counted = line + text.count("\n", counted, pos), pos
        lines[key] = line
        pos = _SPACE.match(text, decoder.raw_decode(text, pos)[1]).end()
        if text[pos] == ",":
            pos = _SPACE.match(text, pos + 1).end()
    return {key: (lines[key], problem) for key, problem in problems.items()}


def split_ids(path: Path) -> list[str]:
    """The problem ids of the test split in `pid_splits.json`, in its order (the official scripts' order)."""
    try:
        splits = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as err:
        raise DataFormatError(path, err.lineno, "<json>", f"expected a JSON object ({err.msg})") from None
    ids = splits.get(SPLIT) if isinstance(splits, dict) else None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise DataFormatError(path, None, SPLIT, "expected a list of problem ids (strings)")
    return ids


def load_scienceqa(
    directory: str | Path,
    image_root: str | Path | None = None,
    check_images: bool = False,
    suffix: str = LETTER_ANSWER,
) -> list[dict]:
    """The ScienceQA release (`directory` holds `problems.json` and `pid_splits.json`; images under
    `image_root/test/<id>/`, by default `directory/images`): the test problems that have an image, in the order of
    `pid_splits.json`; ids are the problem ids."""
    directory = Path(directory)
    problems_file, splits_file = directory / "problems.json", directory / "pid_splits.json"
    for file in (problems_file, splits_file):
        if not file.is_file():
            raise FileNotFoundError(
                f"ScienceQA file not found: {file} (the release's problems.json and pid_splits.json)"
            )
    problems = numbered_problems(problems_file)
    root = Path(image_root if image_root is not None else directory / "images").resolve()
    items = []
    for pid in split_ids(splits_file):
        if pid not in problems:
            raise DataFormatError(splits_file, None, SPLIT, f"problem id {pid!r} is not in {problems_file.name}")
        line, problem = problems[pid]
        if not isinstance(problem, dict):
            raise DataFormatError(
                problems_file, line, "<problem>", f"expected an object for problem {pid!r}, got {problem!r}"
            )
        split = field(problem, "split", str, problems_file, line)
        if split != SPLIT:
            raise DataFormatError(
                problems_file, line, "split", f"expected {SPLIT!r} (listed there in {splits_file.name}), got {split!r}"
            )
        if "image" not in problem:
            raise DataFormatError(problems_file, line, "image", "missing (null for a question without an image)")
        if problem["image"] is None:
            continue
        image = f"{SPLIT}/{pid}/{field(problem, 'image', str, problems_file, line)}"
        full = image_path(root, image, check_images, problems_file, line)
        items.append(scienceqa_item(pid, problem, problems_file, line, image, full, suffix))
    if not items:
        raise DataFormatError(problems_file, None, "image", "no test problem has an image")
    return items


def _test_files(path: Path) -> list[Path]:
    """The test split's files of a Hugging Face layout: `test-*.parquet`, or those under a `test/` folder
    (`save_to_disk`); a single file is taken as it is."""
    if path.is_file():
        return [path]
    files = [
        f
        for f in data_files(path)
        if f.name.startswith((f"{SPLIT}-", f"{SPLIT}.")) or SPLIT in f.relative_to(path).parts[:-1]
    ]
    if not files:
        raise DataFormatError(
            path, None, "<files>", f"expected the {SPLIT} split: {SPLIT}-*.parquet or {SPLIT}/*.arrow"
        )
    return files


def load_scienceqa_hf(path: str | Path, image_dir: str | Path | None = None, suffix: str = LETTER_ANSWER) -> list[dict]:
    """`lmms-lab/ScienceQA`, config `ScienceQA-IMG` (`path`: that folder, or a file of it), split `test`. The layout
    has no problem id: ids are the 0-based row numbers of the split (lmms-eval's `doc_id`)."""
    path = Path(path)
    folder, items = image_folder(path, image_dir), []
    for file in _test_files(path):
        for _, row, problem in read_rows(file, HF_COLUMNS):
            item_id = str(len(items))
            if problem["image"] is None:
                raise DataFormatError(file, row, "image", "no image: ScienceQA-IMG has one per question (not -FULL?)")
            image = save_image(problem["image"], folder, f"{item_id}.png", file, row)
            full = str(folder.resolve() / image)
            items.append(scienceqa_item(item_id, problem, file, row, image, full, suffix))
    return items


def official_letter(prediction: str, n_choices: int) -> str | None:
    """LLaVA's `eval_science_qa.py`: the prediction if it is a letter A-E; its first character if followed by
    `". "`; else the letter of the only `The answer is X<any character>`. A letter past the question's choices
    counts as unparsed (LLaVA's -1; the random pick after its `return -1` never runs)."""
    if prediction in OPTIONS:
        letter = prediction
    elif len(prediction) >= 3 and prediction[0] in OPTIONS and prediction[1:3] == ". ":
        letter = prediction[0]
    else:
        stated = re.findall(r"The answer is ([A-Z]).", prediction)
        letter = stated[0] if len(stated) == 1 else None
    return letter if letter in OPTIONS[:n_choices] else None


def lmms_eval_correct(prediction: str, answer: str) -> bool:
    """lmms-eval's `sqa_process_results`: the stripped prediction equals the letter ignoring case, or starts with an
    upper-case character and a period and that character is the letter."""
    pred, target = prediction.strip(), answer.strip().lower()
    if pred.lower() == target:
        return True
    return len(pred) >= 2 and pred[0].isupper() and pred[1] == "." and pred[0].lower() == target


def grade_band(grade: str) -> str:
    """The paper's grade columns: G1-6 or G7-12."""
    return "G1-6" if int(grade.removeprefix("grade")) <= 6 else "G7-12"


class ScienceQAImg(Benchmark, name="scienceqa_img"):
    """Accuracy overall and by subject (NAT / SOC / LAN), text context (TXT: questions with a hint) and grade band
    (G1-6 / G7-12): the columns of the ScienceQA paper that the image questions have (IMG is all of them)."""

    fields = ("hint", "subject", "grade")
    values = {"subject": tuple(SUBJECTS), "grade": GRADES}

    @staticmethod
    def correct(record: dict, parser: Parser) -> bool:
        prediction, answer, choices = record["prediction"], record["answer"], record["choices"]
        if parser == "official":
            return official_letter(prediction, len(choices)) == answer
        if parser == "lmms_eval":
            return lmms_eval_correct(prediction, answer)
        return choice_vlmevalkit(prediction, dict(zip(OPTIONS, choices))) == answer

    @classmethod
    def record_problem(cls, record: dict) -> tuple[str, str] | None:
        problem = super().record_problem(record)
        choices = record.get("choices")
        if problem is None and not (
            isinstance(choices, list) and 2 <= len(choices) <= len(OPTIONS) and all(isinstance(c, str) for c in choices)
        ):
            return "choices", f"expected a list of 2 to {len(OPTIONS)} strings, got {choices!r}"
        if problem is None and record["answer"] not in OPTIONS[: len(choices)]:
            return "answer", f"expected a letter of the {len(choices)} choices, got {record['answer']!r}"
        return problem

    @classmethod
    def score(cls, records: list[dict], parser: Parser) -> dict[str, float]:
        hits = []
        for record in records:
            if record["subject"] not in SUBJECTS or record["grade"] not in GRADES:
                raise ValueError(
                    f"ScienceQA record {record['id']!r}: subject {record['subject']!r} / grade {record['grade']!r}"
                    f" not among {tuple(SUBJECTS)} / grade1 .. grade12"
                )
            right = cls.correct(record, parser)
            keys = ["overall", f"{SUBJECTS[record['subject']]}/accuracy", f"{grade_band(record['grade'])}/accuracy"]
            if record["hint"]:
                keys.append("TXT/accuracy")
            hits += [(f"scienceqa_img/{key}", right) for key in keys]
        return accuracies(hits)
