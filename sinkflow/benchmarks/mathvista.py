"""MathVista testmini: the release's `testmini.json` and `AI4Math/MathVista`, the two prompts (the dataset's
`query`, lmms-eval's format-prompt), answer extraction and matching per parser, and the accuracies
(docs/benchmarks.md#mathvista).

Every toolkit extracts the answer with a GPT judge after a few rules. sinkflow applies the toolkit's rules, then its
own deterministic ones in place of the judge; what neither extracts is wrong and counted in `mathvista/unextracted`,
unless a local judge (`mathvista_judge.py`) extracted it first (the record's `extraction`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

from sinkflow.benchmarks.base import Benchmark, Parser, accuracies
from sinkflow.benchmarks.hf_layout import data_files, image_folder, read_rows, save_image
from sinkflow.benchmarks.multiple_choice import can_infer
from sinkflow.checks import choice
from sinkflow.data.errors import DataFormatError
from sinkflow.data.files import field, image_path

PromptStyle = Literal["query", "format"]
QUESTION_TYPES = ("multi_choice", "free_form")
ANSWER_TYPES = ("text", "integer", "float", "list")
TASKS = (
    "figure question answering",
    "geometry problem solving",
    "math word problem",
    "textbook question answering",
    "visual question answering",
)
# `numeric commonsense` is the paper tables' NUM column.
SKILLS = (
    "algebraic reasoning",
    "arithmetic reasoning",
    "geometry reasoning",
    "logical reasoning",
    "numeric commonsense",
    "scientific reasoning",
    "statistical reasoning",
)
_HF_COLUMNS = ("pid", "question", "image", "decoded_image", "choices", "unit", "precision", "answer")
_HF_COLUMNS += ("question_type", "answer_type", "metadata")

# The official zero-shot hints (the `query` field) and lmms-eval's format-prompt instructions, by answer kind.
_PLACES = {1: "one decimal place", 2: "two decimal places"}
_EXAMPLES = {1: "1.2, 1.3, 1.4", 2: "1.23, 1.34, 1.45"}


def _answer_kind(question_type: str, answer_type: str, precision: int | None) -> str:
    return (
        "choice" if question_type == "multi_choice" else f"float{precision}" if answer_type == "float" else answer_type
    )


def query_hint(kind: str) -> str:
    """The hint the dataset's `query` starts with."""
    if kind == "choice":
        return "Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end."
    if kind == "integer":
        return (
            "Hint: Please answer the question requiring an integer answer and provide the final value, e.g., 1, 2, 3, "
            "at the end."
        )
    if kind == "list":
        return (
            "Hint: Please answer the question requiring a Python list as an answer and provide the final list, e.g., "
            "[1, 2, 3], [1.2, 1.3, 1.4], at the end."
        )
    p = int(kind[-1])
    return (
        f"Hint: Please answer the question requiring a floating-point number with {_PLACES[p]} and provide the "
        f"final value, e.g., {_EXAMPLES[p]}, at the end."
    )


def format_hint(kind: str) -> str:
    """lmms-eval's format-prompt instruction."""
    if kind == "choice":
        return "Answer with the option's letter from the given choices directly."
    if kind == "integer":
        return "Answer the question using a single integer number."
    if kind == "list":
        return "Answer the question using a Python list."
    return f"Answer the question using a single floating-point number with {_PLACES[int(kind[-1])]}."


def build_prompt(item: dict, style: PromptStyle) -> str:
    """`query`: the official zero-shot query (hint, `Question: ...`, `Choices:` with `(A) ...`), as the dataset's
    `query` field holds it; `format`: lmms-eval's format-prompt (question, `A. ...` options, instruction)."""
    kind = _answer_kind(item["question_type"], item["answer_type"], item["precision"])
    unit = f" (Unit: {item['unit']})" if item["unit"] else ""
    if style == "query":
        options = ["Choices:", *(f"({chr(65 + i)}) {c}" for i, c in enumerate(item["choices"]))]
        lines = [query_hint(kind), f"Question: {item['question']}{unit}", "\n".join(options) if item["choices"] else ""]
    else:
        options = [f"{chr(65 + i)}. {c}" for i, c in enumerate(item["choices"])]
        lines = [f"{item['question']}{unit}", "\n".join(options), format_hint(kind)]
    return "\n".join(line for line in lines if line).strip()


def _check(ok: bool, path: Path, where: int | str | None, name: str, message: str) -> None:
    if not ok:
        raise DataFormatError(path, where, name, message)


def mathvista_item(
    obj: dict, path: Path, where: int | str, root: Path, check_images: bool, prompt: PromptStyle
) -> dict:
    """One MathVista problem (the release's fields) as an evaluation item; `where` names it in errors."""
    pid = field(obj, "pid", str, path, where)
    question = field(obj, "question", str, path, where)
    image = field(obj, "image", str, path, where)
    answer = field(obj, "answer", str, path, where)
    question_type = field(obj, "question_type", str, path, where)
    answer_type = field(obj, "answer_type", str, path, where)
    _check(question_type in QUESTION_TYPES, path, where, "question_type", f"expected one of {QUESTION_TYPES}")
    _check(answer_type in ANSWER_TYPES, path, where, "answer_type", f"expected one of {ANSWER_TYPES}")
    choices, unit, precision = obj.get("choices") or [], obj.get("unit"), obj.get("precision")
    _check(
        isinstance(choices, list) and all(isinstance(c, str) for c in choices), path, where, "choices", "not strings"
    )
    _check(unit is None or isinstance(unit, str), path, where, "unit", f"expected a string or null, got {unit!r}")
    if question_type == "multi_choice":
        _check(
            answer_type == "text", path, where, "answer_type", f"expected 'text' for multi_choice, got {answer_type!r}"
        )
        _check(answer in choices, path, where, "answer", f"expected one of the choices {choices}, got {answer!r}")
    else:
        _check(answer_type != "text", path, where, "answer_type", "expected integer, float or list for free_form")
    if answer_type == "float":  # the release stores 1 / 2; the Hugging Face column 1.0 / 2.0
        _check(precision in (1, 2), path, where, "precision", f"expected 1 or 2 for a float answer, got {precision!r}")
        precision = int(precision)
    metadata = field(obj, "metadata", dict, path, where)
    task, skills = field(metadata, "task", str, path, where), field(metadata, "skills", list, path, where)
    _check(task in TASKS, path, where, "metadata.task", f"expected one of {TASKS}, got {task!r}")
    _check(all(s in SKILLS for s in skills), path, where, "metadata.skills", f"expected some of {SKILLS}, got {skills}")
    item = {
        "benchmark": "mathvista",
        "id": pid,
        "question": question,
        "answer": answer,
        "question_type": question_type,
        "answer_type": answer_type,
        "choices": choices,
        "unit": unit,
        "precision": precision if answer_type == "float" else None,
        "category": field(metadata, "category", str, path, where),
        "task": task,
        "skills": skills,
        "image": image,
        "image_path": image_path(root, image, check_images, path, where),
    }
    # The judge prompt reads the official query; the release's testmini.json has none, so it is rebuilt (equal to
    # the release's query.json on all 1000 testmini problems).
    item["query"] = obj["query"] if isinstance(obj.get("query"), str) else build_prompt(item, "query")
    item["prompt"] = item["query"] if prompt == "query" else build_prompt(item, "format")
    return item


def load_mathvista(
    path: str | Path, image_root: str | Path, prompt: PromptStyle = "query", check_images: bool = False
) -> list[dict]:
    """The release's `testmini.json` (pid -> problem, images as `images/<pid>.jpg` under `image_root`)."""
    path, root = Path(path), Path(image_root).resolve()
    choice("dataset.eval_sets.mathvista.prompt", prompt, PromptStyle)
    if not path.is_file():
        raise FileNotFoundError(f"MathVista problems not found: {path} (testmini.json of the MathVista release)")
    try:
        problems = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataFormatError(path, None, "<file>", f"expected a JSON object of pid -> problem ({err})") from None
    _check(isinstance(problems, dict) and bool(problems), path, None, "<file>", "expected a non-empty pid -> problem")
    items = []
    for pid, obj in problems.items():
        where = f"pid {pid}"
        _check(isinstance(obj, dict), path, where, "<problem>", f"expected an object, got {obj!r}")
        _check(obj.get("pid") == pid, path, where, "pid", f"expected {pid!r} (its key), got {obj.get('pid')!r}")
        items.append(mathvista_item(obj, path, where, root, check_images, prompt))
    return items


def load_mathvista_hf(
    path: str | Path, image_dir: str | Path | None = None, prompt: PromptStyle = "query", split: str = "testmini"
) -> list[dict]:
    """`AI4Math/MathVista`: the `<split>-*.parquet` files (or every file of a save_to_disk folder, rows filtered by
    `metadata.split`); `decoded_image` is written as the row's `image` (`images/<pid>.jpg`)."""
    choice("dataset.eval_sets.mathvista.prompt", prompt, PromptStyle)
    files = data_files(Path(path))
    files = [f for f in files if f.name.startswith(f"{split}-")] or files
    folder, items, seen = image_folder(path, image_dir), [], {}
    for file in files:
        for file_, row, obj in read_rows(file, _HF_COLUMNS):
            if (obj["metadata"] or {}).get("split") != split:
                continue
            where = row
            if obj["pid"] in seen:
                raise DataFormatError(file_, row, "pid", f"duplicate pid {obj['pid']!r} (first at {seen[obj['pid']]})")
            seen[obj["pid"]] = f"{file_}:{row}"
            save_image(obj["decoded_image"], folder, obj["image"], file_, row)
            items.append(mathvista_item(obj, file_, where, folder.resolve(), False, prompt))
    if not items:
        raise DataFormatError(path, None, "metadata.split", f"no row of split {split!r}")
    return items


# ---- toolkit rules applied before their judge -------------------------------------------------------------------


def official_rule(response: str, record: dict) -> str | None:
    """The official `extract_answer` before GPT (lmms-eval's is the same; it strips the response first): an empty
    response is the extraction "", a multi-choice response equal to a choice is itself, an integer / float answer
    that Python's int() / float() read is that number; else None (the judge's turn)."""
    if response == "":
        return ""
    if record["question_type"] == "multi_choice" and response in record["choices"]:
        return response
    for kind, read in (("integer", int), ("float", float)):
        if record["answer_type"] == kind:
            try:
                return str(read(response))
            except ValueError:
                pass
    return None


def _options(record: dict) -> dict[str, str]:
    return {chr(65 + i): text for i, text in enumerate(record["choices"])}


def vlmevalkit_rule(response: str, record: dict) -> str | None:
    """VLMEvalKit's prefetch (`post_check(prefetch=True)`): a multi-choice letter `can_infer` finds; an integer /
    float response only when it already equals the answer and is not zero (a falsy prefetch goes to the judge);
    never a list."""
    if record["question_type"] == "multi_choice":
        return can_infer(response, _options(record))
    for kind, read in (("integer", int), ("float", float)):
        if record["answer_type"] == kind:
            try:
                value = read(response)
            except ValueError:
                return None
            return response if value == read(record["answer"]) and value else None
    return None


# ---- sinkflow's rules, in place of the judge --------------------------------------------------------------------

_STATED = re.compile(r"(?i)answer\s*(?:is\s*:?|:)\s*")
_NUMBER = re.compile(
    r"\\frac\{(?P<fn>-?\d+(?:\.\d+)?)\}\{(?P<fd>-?\d+(?:\.\d+)?)\}"
    r"|(?P<n>[-+]?\d+(?:\.\d+)?)\s*/\s*(?P<d>\d+(?:\.\d+)?)"
    r"|(?P<x>[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+)"
)
_LIST = re.compile(r"\[([^\[\]]*)\]")


def _number(match: re.Match, integer: bool) -> str | None:
    """A number match as text: fractions divided, thousands commas dropped; an integral fraction as an integer."""
    num, den = match.group("fn") or match.group("n"), match.group("fd") or match.group("d")
    if num is None:
        return match.group("x").replace(",", "")
    if float(den) == 0:
        return None
    value = float(num) / float(den)
    return str(int(value)) if integer and value.is_integer() else str(value)


def _letter(response: str, letters: str) -> str | None:
    """An option letter: `(B)`, a bare `B` / `B.`, `answer is B` / `Answer: (B)`, or a leading `B.` / `B:` / `B)`."""
    for pattern in (
        r"\(([A-Za-z])\)",
        r"^([A-Z])\W*$",
        r"(?i:answer(?:\s+is)?)\s*:?\s*\(?([A-Z])\b",
        r"^([A-Z])[.:)]\s",
    ):
        found = re.search(pattern, response.strip())
        if found and found.group(1).upper() in letters:
            return found.group(1).upper()
    return None


def sinkflow_rule(response: str, record: dict) -> str | None:
    """sinkflow's deterministic extraction, the same under every parser, for what the toolkit rules leave to a judge:
    an option letter or the one option text the response contains; the number after `answer is` / `answer:`, else
    the last number (fractions and `\\frac{a}{b}` divided, units and thousands commas dropped); the last `[...]`
    list. None when there is none."""
    if record["question_type"] == "multi_choice":
        letter = _letter(response, "".join(_options(record)))
        if letter:
            return letter
        found = [c for c in record["choices"] if c.lower() in response.lower()]
        return found[0] if len(found) == 1 else None
    if record["answer_type"] == "list":
        lists = _LIST.findall(response)
        if not lists:
            return None
        parts = [p.strip() for p in lists[-1].split(",") if p.strip()]
        numbers = [_NUMBER.fullmatch(p) for p in parts]
        return "[" + ", ".join(_number(m, True) if m else p for m, p in zip(numbers, parts)) + "]"
    stated = list(_STATED.finditer(response))
    tail = response[stated[-1].end() :] if stated else ""
    matches = list(_NUMBER.finditer(tail))[:1] or list(_NUMBER.finditer(response))[-1:]
    return _number(matches[0], record["answer_type"] == "integer") if matches else None


def extraction(record: dict, parser: Parser) -> str | None:
    """The extracted answer: the parser's toolkit rule, then sinkflow's, then a judge's `extraction` in the record;
    None when none of them has one (unextracted)."""
    response = record["prediction"]
    if parser == "vlmevalkit":
        found = vlmevalkit_rule(response, record)
    else:
        found = official_rule(response.strip() if parser == "lmms_eval" else response, record)
    if found is None:
        found = sinkflow_rule(response, record)
    if found is None and record.get("extraction"):
        found = record["extraction"].strip() or None
    return found


# ---- normalisation and matching per parser ----------------------------------------------------------------------


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (unit insert, delete, substitute), as `Levenshtein.distance`."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def normalize(extracted: str, record: dict, parser: Parser) -> str | None:
    """`normalize_extracted_answer`: a multi-choice extraction becomes a choice (the letter of `(X)` or a bare
    letter, else the closest choice by edit distance, the first on ties); an integer `str(int(float(x)))`; a float
    rounded to the precision; a list as is; None where Python cannot read the number."""
    if record["question_type"] == "multi_choice":
        text = extracted.strip()
        letter = re.findall(r"\(([a-zA-Z])\)", text)
        if letter:
            text = letter[0].upper()
        letters = [chr(65 + i) for i in range(len(record["choices"]))]
        if text in letters:
            return record["choices"][letters.index(text)]
        distances = [edit_distance(text, c) for c in record["choices"]]
        return record["choices"][distances.index(min(distances))]
    try:
        if record["answer_type"] == "integer":
            return str(int(float(extracted)))
        if record["answer_type"] == "float":
            # lmms-eval passes the Hugging Face column unconverted, a float (2.0), and round() refuses a float
            # digit count: the TypeError lands in its bare except, so every float answer normalises to None.
            digits = float(record["precision"]) if parser == "lmms_eval" else int(record["precision"])
            return str(round(float(extracted), digits))
    except (TypeError, ValueError, OverflowError):
        return None
    return extracted


def vlmevalkit_right(extracted: str, record: dict) -> bool:
    """VLMEvalKit's `post_check`: the letter `can_infer` reads is the answer's; int() / float() equality (no
    rounding to the precision); a list answer is never right (its branch compares the string 'None')."""
    if record["question_type"] == "multi_choice":
        options = _options(record)
        return can_infer(extracted, options) == chr(65 + record["choices"].index(record["answer"]))
    for kind, read in (("integer", int), ("float", float)):
        if record["answer_type"] == kind:
            try:
                return read(extracted) == read(record["answer"])
            except ValueError:
                return False
    return False


def judged_right(extracted: str, record: dict, parser: Parser) -> bool:
    """Whether an extraction matches the answer: `safe_equal` after normalising (official: `==`; lmms-eval: equal
    after str() and strip()), or VLMEvalKit's `post_check`."""
    if parser == "vlmevalkit":
        return vlmevalkit_right(extracted, record)
    normalized = normalize(extracted, record, parser)
    if parser == "lmms_eval":
        return str(normalized).strip() == str(record["answer"]).strip()
    return normalized == record["answer"]


class MathVista(Benchmark, name="mathvista"):
    """Accuracy overall, per question type, per task and per skill (a problem counts in each of its skills), and
    the share of answers nothing extracted (`mathvista/unextracted`)."""

    fields = ("question_type", "answer_type", "task", "query")
    values = {"question_type": QUESTION_TYPES, "answer_type": ANSWER_TYPES}

    @staticmethod
    def correct(record: dict, parser: Parser) -> bool:
        extracted = extraction(record, parser)
        return extracted is not None and judged_right(extracted, record, parser)

    @classmethod
    def record_problem(cls, record: dict) -> tuple[str, str] | None:
        problem = super().record_problem(record)
        choices, skills = record.get("choices"), record.get("skills")
        if problem is None and not (isinstance(skills, list) and all(isinstance(s, str) for s in skills)):
            problem = "skills", f"expected a list of strings, got {skills!r}"
        if problem is None and not (isinstance(choices, list) and all(isinstance(c, str) for c in choices)):
            problem = "choices", f"expected a list of strings, got {choices!r}"
        if problem is None and record["question_type"] == "multi_choice" and record["answer"] not in choices:
            problem = "answer", f"expected one of the choices {choices}, got {record['answer']!r}"
        if problem is None and record["answer_type"] == "float" and record.get("precision") not in (1, 2):
            problem = "precision", f"expected 1 or 2 for a float answer, got {record.get('precision')!r}"
        if problem is None and not isinstance(record.get("extraction", ""), str):
            problem = "extraction", f"expected a string, got {record['extraction']!r}"
        return problem

    @classmethod
    def score(cls, records: list[dict], parser: Parser) -> dict[str, float]:
        hits, unextracted = [], 0
        for record in records:
            extracted = extraction(record, parser)
            unextracted += extracted is None
            right = extracted is not None and judged_right(extracted, record, parser)
            keys = ["mathvista/overall", f"mathvista/{record['question_type']}/accuracy"]
            keys += [f"mathvista/{record['task']}/accuracy"]
            keys += [f"mathvista/{skill}/accuracy" for skill in dict.fromkeys(record["skills"])]
            hits += [(key, right) for key in keys]
        return {**accuracies(hits), "mathvista/unextracted": unextracted / len(records)}
