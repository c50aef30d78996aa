"""MMMU: the hub parquet files (`MMMU/MMMU`, one folder per subject, and `lmms-lab/MMMU`, one set), multi-image
items, its answer parsing per parser (with the toolkits' seeded random fallbacks) and its micro accuracies per
subject, per discipline and overall (docs/benchmarks.md#mmmu)."""

from __future__ import annotations

import ast
import random
import re
from collections.abc import Iterable
from pathlib import Path

from sinkflow.benchmarks.base import Benchmark, Parser
from sinkflow.benchmarks.hf_layout import data_files, image_folder, read_rows, save_image
from sinkflow.benchmarks.multiple_choice import choice_vlmevalkit
from sinkflow.checks import choice
from sinkflow.data.errors import DataFormatError
from sinkflow.data.templates import IMAGE_TOKEN

# The official subject -> discipline map, in the official order (the order the scores are summed in).
DISCIPLINES = {
    "Art and Design": ("Art", "Art_Theory", "Design", "Music"),
    "Business": ("Accounting", "Economics", "Finance", "Manage", "Marketing"),
    "Science": ("Biology", "Chemistry", "Geography", "Math", "Physics"),
    "Health and Medicine": (
        "Basic_Medical_Science",
        "Clinical_Medicine",
        "Diagnostics_and_Laboratory_Medicine",
        "Pharmacy",
        "Public_Health",
    ),
    "Humanities and Social Science": ("History", "Literature", "Sociology", "Psychology"),
    "Tech and Engineering": (
        "Agriculture",
        "Architecture_and_Engineering",
        "Computer_Science",
        "Electronics",
        "Energy_and_Power",
        "Materials",
        "Mechanical_Engineering",
    ),
}
# The order the official script and lmms-eval meet the subjects in (alphabetical): random fallbacks draw in it.
SUBJECTS = tuple(sorted(subject for subjects in DISCIPLINES.values() for subject in subjects))
QUESTION_TYPES = ("multiple-choice", "open")
SPLITS = ("dev", "validation")
COLUMNS = ("id", "question", "options", "answer", "question_type", *(f"image_{k}" for k in range(1, 8)))
# lmms-eval's two instructions (its mmmu_val task), after a blank line.
MULTIPLE_CHOICE_ANSWER = "Answer with the option's letter from the given choices directly."
OPEN_ANSWER = "Answer the question using a single word or phrase."
_ID = re.compile(r"^(dev|validation|test)_(\w+)_(\d+)$")
_REFERENCE = re.compile(r"<image (\d+)>")
# Each toolkit's seed of the random letter given to an unparseable multiple-choice answer (vlmevalkit draws none).
SEEDS = {"official": 42, "lmms_eval": 0}


def mmmu_prompt(question: str, options: list[str], multiple_choice_prompt: str, open_prompt: str) -> str:
    """lmms-eval's MMMU prompt: the question, the options as `A. ...` lines, a blank line, the instruction."""
    if not options:
        return f"{question}\n\n{open_prompt}"
    lines = "\n".join(f"{chr(ord('A') + i)}. {option}" for i, option in enumerate(options))
    return f"{question}\n{lines}\n\n{multiple_choice_prompt}"


def place_images(prompt: str) -> tuple[str, list[int]]:
    """The images a prompt cites (`<image k>`, in the order of first appearance) and, when there are several, the
    prompt with each image's first citation replaced by the image token (later ones keep their text)."""
    cited = list(dict.fromkeys(int(k) for k in _REFERENCE.findall(prompt)))
    if len(cited) > 1:
        for k in cited:
            prompt = prompt.replace(f"<image {k}>", IMAGE_TOKEN, 1)
    return prompt, cited


def parse_options(text: str) -> list[str] | None:
    """The options of a row (the text of a Python list of strings, as the hub stores them), or None."""
    try:
        options = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    return options if isinstance(options, list) and all(isinstance(o, str) for o in options) else None


def mmmu_item(
    row: dict,
    file: Path,
    line: int,
    split: str,
    folder: Path,
    seen: dict[str, tuple[Path, int]],
    multiple_choice_prompt: str,
    open_prompt: str,
) -> dict:
    """One row (`id`, `question`, `options`, `answer`, `question_type`, `image_1..7`, ...) as an evaluation item;
    its images are written to `folder` once."""
    for name in ("id", "question", "options", "answer", "question_type"):
        if not isinstance(row[name], str):
            raise DataFormatError(file, line, name, f"expected a string, got {row[name]!r}")
    qid, question, answer, kind = row["id"], row["question"], row["answer"], row["question_type"]
    match = _ID.match(qid)
    if not match or match.group(1) != split or match.group(2) not in SUBJECTS:
        raise DataFormatError(file, line, "id", f"expected {split}_<subject>_<n> with a subject of MMMU, got {qid!r}")
    if qid in seen:
        raise DataFormatError(file, line, "id", f"duplicate id {qid!r} (first in {seen[qid][0]}:{seen[qid][1]})")
    seen[qid] = (file, line)
    if kind not in QUESTION_TYPES:
        raise DataFormatError(file, line, "question_type", f"expected one of {QUESTION_TYPES}, got {kind!r}")
    options = parse_options(row["options"])
    if options is None:
        raise DataFormatError(file, line, "options", f"expected the text of a list of strings, got {row['options']!r}")
    letters = [chr(ord("A") + i) for i in range(len(options))]
    if kind == "multiple-choice" and answer not in letters:
        raise DataFormatError(file, line, "answer", f"expected one of {letters} (one per option), got {answer!r}")
    if not answer.strip():
        raise DataFormatError(file, line, "answer", "expected an answer, got an empty one")
    if IMAGE_TOKEN in question or any(IMAGE_TOKEN in option for option in options):
        raise DataFormatError(file, line, "question", f"the text holds {IMAGE_TOKEN}, which marks where images go")
    shown = options if kind == "multiple-choice" else []
    prompt, cited = place_images(mmmu_prompt(question, shown, multiple_choice_prompt, open_prompt))
    if not cited:
        raise DataFormatError(file, line, "question", "expected <image k> in the question or its options, got none")
    names = []  # the image files, in prompt order
    for k in cited:
        cell = row.get(f"image_{k}")
        if not isinstance(cell, dict) or not cell.get("bytes"):
            raise DataFormatError(file, line, f"image_{k}", f"<image {k}> is cited but the row has no such image")
        suffix = Path(cell.get("path") or "").suffix or ".png"
        names.append(save_image(cell, folder, f"{qid}_{k}{suffix}", file, line))
    paths = [str(folder.resolve() / name) for name in names]
    return {
        "benchmark": "mmmu",
        "id": qid,
        "category": match.group(2),
        "subfield": row.get("subfield") or "",
        "question_type": kind,
        "question": question,
        "options": row["options"],
        "answer": answer,
        "images": names,
        "image_path": paths if len(paths) > 1 else paths[0],  # one image: a path, as every other benchmark has
        "prompt": prompt,
    }


def split_files(path: Path, split: str) -> list[Path]:
    """The files of one split: `<split>-*.parquet` anywhere under `path` (both hub layouts), the `*.arrow` of a
    save_to_disk `<split>/` folder, or `path` itself when it is a file."""
    if path.is_file():
        return [path]
    files = [f for f in data_files(path) if f.name.startswith(f"{split}-") or split in f.relative_to(path).parts[:-1]]
    if not files:
        raise DataFormatError(path, None, "<files>", f"expected {split}-*.parquet files or a {split}/ arrow folder")
    return files


def load_mmmu(
    path: str | Path,
    image_dir: str | Path | None = None,
    split: str = "validation",
    multiple_choice_prompt: str = MULTIPLE_CHOICE_ANSWER,
    open_prompt: str = OPEN_ANSWER,
) -> list[dict]:
    """MMMU from its hub files saved locally: `MMMU/MMMU` (`<Subject>/<split>-*.parquet`, the release itself) or
    `lmms-lab/MMMU` (`data/<split>-*.parquet`), or one parquet file; embedded images are written to `image_dir`
    (default `<path>_images`)."""
    choice("dataset.eval_sets.mmmu.split", split, SPLITS)
    folder, seen, items = image_folder(path, image_dir), {}, []
    for file in split_files(Path(path), split):
        for _, line, row in read_rows(file, COLUMNS):
            items.append(mmmu_item(row, file, line, split, folder, seen, multiple_choice_prompt, open_prompt))
    return items


# ----- answer parsing ------------------------------------------------------------------------------------------


def choice_letter(response: str, options: list[str], parser: Parser, rng: random.Random) -> str:
    """The letter a multiple-choice response picks under the official parser or lmms-eval's copy of it: `(X)`;
    else ` X ` (official) or `X ` then `X.` (lmms-eval); else, for responses of more than 5 words, an option's text;
    the last one in the response when several match; a letter drawn from `rng` when nothing matches."""
    letters = [chr(ord("A") + i) for i in range(len(options))]
    for char in (",", ".", "!", "?", ";", ":", "'"):  # one character at a time, as the official script strips
        response = response.strip(char)
    padded = f" {response} "
    found = [x for x in letters if f"({x})" in padded]
    where = [padded.rfind(f"({x})") for x in found]
    patterns = (" {} ",) if parser == "official" else ("{} ", "{}.")
    for pattern in patterns:
        if not found:
            found = [x for x in letters if pattern.format(x) in padded]
            where = [padded.rfind(f" {x} ") for x in found]  # lmms-eval ranks its `X ` / `X.` matches by ` X ` too
    if not found and len(padded.split()) > 5:
        found = [x for x, option in zip(letters, options) if option.lower() in padded.lower()]
        where = [padded.lower().rfind(option.lower()) for x, option in zip(letters, options) if x in found]
    if not found:
        return rng.choice(letters)
    return found[where.index(max(where))]  # the first of the rightmost, as numpy's argmax


_INDICATORS = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ")
_TRIVIAL = (":", ",", ".", "!", "?", ";", "'")
_NUMBERS = (
    re.compile(r"-?\b\d{1,3}(?:,\d{3})+\b"),  # with thousands separators
    re.compile(r"-?\d+(?:\.\d+)?[eE][+-]?\d+"),  # scientific notation
    re.compile(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])"),  # plain
)


def normalize(text: str) -> list[str | float]:
    """The official normalisation: a number (commas dropped) rounded to 2 decimals, else the lower-cased text; a
    one-character text becomes `" x"` and `"x "`, so that it matches only as a word."""
    text = text.strip()
    try:
        return [round(float(text.replace(",", "")), 2)]
    except ValueError:
        text = text.lower()
        return [f" {text}", f"{text} "] if len(text) == 1 else [text]


def extract_numbers(text: str) -> list[str]:
    """Every number in the text: those with thousands separators, then scientific notation, then plain ones."""
    return [number for pattern in _NUMBERS for number in pattern.findall(text)]


def key_answers(response: str) -> list[str]:
    """The parts of a response that may hold the answer: per line, the shortest tail after an indicator word (the
    last line also after `=`); the whole response when no line has one."""
    response = response.strip().strip(".").lower()
    # The official split also cuts at ". " before a capital letter, which lower-casing has removed: lines only.
    lines = response.split("\n")
    keys = []
    for index, line in enumerate(lines):
        indicators = _INDICATORS + (("=",) if index == len(lines) - 1 else ())
        shortest = None
        for indicator in indicators:
            if indicator in line:
                tail = line.split(indicator)[-1].strip()
                if not shortest or len(tail) < len(shortest):
                    shortest = tail
        if shortest and shortest.strip() not in _TRIVIAL:
            keys.append(shortest)
    return keys or [response]


def open_candidates(response: str) -> list[str | float]:
    """The official open-answer parse: the key parts and the numbers in them, normalised, each once."""
    keys = key_answers(response)
    found = keys + [number for key in keys for number in extract_numbers(key)]
    return list(dict.fromkeys(value for text in found for value in normalize(text)))


def open_right(gold: str | list[str], candidates: Iterable[str | float]) -> bool:
    """The official match: a text candidate contains a normalised text answer, or a number equals a numeric one."""
    answers = [value for text in ([gold] if isinstance(gold, str) else gold) for value in normalize(text)]
    return any(
        any(isinstance(a, str) and a in c for a in answers) if isinstance(c, str) else c in answers for c in candidates
    )


def gold_answers(answer: str) -> str | list[str]:
    """An open answer as the official answer file holds it: several accepted answers (stored as the text of a
    Python list) as a list, else the text."""
    options = parse_options(answer) if answer.startswith("[") else None
    return options if options else answer


def mmmu_right(record: dict, parser: Parser, rng: random.Random) -> bool:
    """Whether one answer is right; `rng` gives the letter of an unparseable multiple-choice answer."""
    response, answer = record["prediction"], record["answer"]
    options = parse_options(record["options"]) or []
    if parser == "vlmevalkit":
        # Open questions become two choices after the fact: A = the answer, B = 'Other Answers'; the truth is the
        # answer itself when it is one capital letter, else A.
        choices = dict(zip("ABCDEFGHIJKLMNOPQRSTUVWXYZ", options)) or {"A": answer, "B": "Other Answers"}
        truth = answer if len(answer) == 1 and "A" <= answer <= "Z" else "A"
        return choice_vlmevalkit(response, choices) == truth
    if record["question_type"] == "multiple-choice":
        return choice_letter(response, options, parser, rng) == answer
    candidates = open_candidates(response)
    if parser == "lmms_eval":
        # lmms-eval keeps only the first candidate, as text, which its matcher then reads one character at a time:
        # no answer of two characters or more (all of them, after normalisation) can match.
        return open_right(answer, str(candidates[0]) if candidates else "")
    return open_right(gold_answers(answer), candidates)


def question_order(record: dict) -> tuple[int, int]:
    """Where a question comes in the official order: its subject (alphabetical), then its number."""
    match = _ID.match(str(record["id"]))
    if not match or record["category"] not in SUBJECTS:
        raise ValueError(f"MMMU record {record['id']!r}: expected an id <split>_<subject>_<n> of an MMMU subject")
    return SUBJECTS.index(record["category"]), int(match.group(3))


class MMMU(Benchmark, name="mmmu"):
    """Micro accuracy per subject, per discipline and overall, summed in the official order."""

    fields = ("category", "question_type", "options")
    values = {"category": SUBJECTS, "question_type": QUESTION_TYPES}

    @staticmethod
    def correct(record: dict, parser: Parser) -> bool:
        # Judged on its own (the per-scope accuracies): a random fallback is the first draw of its parser's stream.
        return mmmu_right(record, parser, random.Random(SEEDS.get(parser)))

    @classmethod
    def record_problem(cls, record: dict) -> tuple[str, str] | None:
        problem = super().record_problem(record)
        options = parse_options(record["options"])
        if problem is None and (options is None or (record["question_type"] == "multiple-choice" and not options)):
            return (
                "options",
                f"expected the text of a list of strings (options to choose from), got {record['options']!r}",
            )
        return problem

    @classmethod
    def score(cls, records: list[dict], parser: Parser) -> dict[str, float]:
        # One random stream over the questions in the official order, whatever order the records came in.
        rng = random.Random(SEEDS.get(parser))
        right: dict[str, list[bool]] = {}
        for record in sorted(records, key=question_order):
            right.setdefault(record["category"], []).append(mmmu_right(record, parser, rng))
        out = {f"mmmu/{subject}/accuracy": sum(hits) / len(hits) for subject, hits in right.items()}
        groups = {f"mmmu/{d}/accuracy": [s for s in members if s in right] for d, members in DISCIPLINES.items()}
        for key, members in {**groups, "mmmu/overall": list(right)}.items():
            if members:
                out[key] = group_accuracy([right[s] for s in members], parser)
        return out


def group_accuracy(subjects: list[list[bool]], parser: Parser) -> float:
    """The accuracy of a group of subjects: VLMEvalKit's mean over the questions, or the official sum of each
    subject's accuracy times its questions, added one by one in order (the last digit depends on it)."""
    total = sum(len(hits) for hits in subjects)
    if parser == "vlmevalkit":
        return sum(sum(hits) for hits in subjects) / total
    weighted = 0.0
    for hits in subjects:
        weighted += sum(hits) / len(hits) * len(hits)
    return weighted / total
