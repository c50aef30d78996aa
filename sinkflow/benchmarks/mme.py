"""MME: the official eval_tool layout (`<subtask>.txt`: image, question, answer[, response]), its release folders
and `lmms-lab/MME`, its yes/no parsing per parser, and its scores (docs/benchmarks.md#mme)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from sinkflow.benchmarks.base import Benchmark, Parser
from sinkflow.benchmarks.common import SHORT_ANSWER, short_answer_prompt
from sinkflow.benchmarks.hf_layout import image_folder, read_rows, save_image
from sinkflow.benchmarks.yes_no import yes_no_vlmevalkit
from sinkflow.data.errors import DataFormatError
from sinkflow.data.files import read_lines

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
SUBTASKS = PERCEPTION + COGNITION
YES_NO_SUFFIX = " Please answer yes or no."


def _image_path(root: Path, subtask: str, image: str) -> str:
    """Image location: the release layouts `<subtask>/images/` or `<subtask>/`, else flat under root."""
    for candidate in (root / subtask / "images" / image, root / subtask / image):
        if candidate.is_file():
            return str(candidate)
    return str(root / image)


def _read_subtask(path: Path, root: Path, check_images: bool, suffix: str = SHORT_ANSWER) -> list[dict]:
    """Items of one subtask file, checking fields and the two-questions-per-image pairing."""
    rows = []
    for line_no, line in read_lines(path):
        fields = line.split("\t")
        # The official tool appends the model response as a 4th column; it is not ground truth.
        if len(fields) not in (3, 4):
            raise DataFormatError(
                path, line_no, "<line>", f"expected 3 tab-separated fields (image, question, answer), got {len(fields)}"
            )
        image, question, answer = fields[:3]
        response = fields[3] if len(fields) == 4 else None
        if not image:
            raise DataFormatError(path, line_no, "image", "expected an image name, got an empty field")
        if answer not in ("Yes", "No"):
            raise DataFormatError(path, line_no, "answer", f"expected 'Yes' or 'No', got {answer!r}")
        rows.append((line_no, image, question, answer, response))
    return mme_items(path, path.stem, rows, root, check_images, suffix)


def mme_items(path: Path, subtask: str, rows: list[tuple], root: Path, check_images: bool, suffix: str) -> list[dict]:
    """Items of one subtask from `(line, image, question, answer, response or None)` rows, two per image."""
    if len(rows) % 2:
        raise DataFormatError(path, rows[-1][0], "image", "expected two questions per image, the last image has one")
    items, seen = [], set()
    for k, (line_no, image, question, answer, response) in enumerate(rows):
        if k % 2 and image != rows[k - 1][1]:
            raise DataFormatError(
                path, line_no, "image", f"expected {rows[k - 1][1]!r} (pair of line {rows[k - 1][0]}), got {image!r}"
            )
        if k % 2 == 0 and image in seen:
            raise DataFormatError(path, line_no, "image", f"image {image!r} already has its two questions")
        seen.add(image)
        full = _image_path(root, subtask, image)
        if check_images and not Path(full).is_file():
            raise DataFormatError(path, line_no, "image", f"expected an image file at {full}")
        item = {
            "benchmark": "mme",
            "id": f"{subtask}/{image}/{k % 2}",
            "category": subtask,
            "question": question,
            "answer": answer,
            "image": image,
            "image_path": full,
            "prompt": short_answer_prompt(question.replace(YES_NO_SUFFIX, ""), suffix),
        }
        if response is not None:
            item["prediction"] = response
        items.append(item)
    return items


def load_mme(
    directory: str | Path, image_root: str | Path, check_images: bool = False, suffix: str = SHORT_ANSWER
) -> list[dict]:
    """Load every `<subtask>.txt` of an MME eval_tool directory as evaluation items, in subtask order."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"MME directory not found: {directory} (expected <subtask>.txt files)")
    files = {p.stem: p for p in directory.glob("*.txt")}
    for name, path in sorted(files.items()):
        if name not in SUBTASKS:
            raise DataFormatError(path, None, "<file name>", f"expected one of the 14 MME subtasks {SUBTASKS}")
    if not files:
        raise DataFormatError(directory, None, "<files>", "expected <subtask>.txt files")
    root = Path(image_root).resolve()
    return [
        item for name in SUBTASKS if name in files for item in _read_subtask(files[name], root, check_images, suffix)
    ]


def load_mme_results(directory: str | Path) -> list[dict]:
    """Prediction records from an MME eval_tool results folder (`<subtask>.txt` with a 4th, response column)."""
    records = load_mme(directory, directory)
    missing = [r for r in records if "prediction" not in r]
    if missing:
        raise DataFormatError(
            Path(directory) / f"{missing[0]['category']}.txt",
            None,
            "response",
            f"{len(missing)} lines have no 4th (model response) column: not a results folder",
        )
    return records


IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg")


def load_mme_release(root: str | Path, check_images: bool = False, suffix: str = SHORT_ANSWER) -> list[dict]:
    """Load MME from its release folders (`MME_Benchmark_release_version/<subtask>/`): either `images/` beside
    `questions_answers_YN/`, or images beside their question files; each `NNNN.txt` holds an image's two
    `question<TAB>answer` lines. Ids and pairing are those of the eval_tool layout."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"MME release not found: {root} (expected MME_Benchmark_release_version/ with one folder per subtask)"
        )
    items = []
    for subtask in SUBTASKS:
        folder = root / subtask
        if not folder.is_dir():
            continue
        questions = folder / "questions_answers_YN"
        images = folder / "images" if questions.is_dir() else folder
        for path in sorted((questions if questions.is_dir() else folder).glob("*.txt")):
            image = next((p.name for p in (images / (path.stem + s) for s in IMAGE_SUFFIXES) if p.is_file()), None)
            if image is None:
                raise DataFormatError(path, None, "image", f"expected {path.stem}.jpg or .png in {images}")
            rows = []
            for line_no, line in read_lines(path):
                fields = line.split("\t")
                if len(fields) != 2:
                    raise DataFormatError(
                        path, line_no, "<line>", f"expected question<TAB>answer, got {len(fields)} fields"
                    )
                if fields[1] not in ("Yes", "No"):
                    raise DataFormatError(path, line_no, "answer", f"expected 'Yes' or 'No', got {fields[1]!r}")
                rows.append((line_no, image, fields[0], fields[1], None))
            items += mme_items(path, subtask, rows, root.resolve(), check_images, suffix)
    if not items:
        raise DataFormatError(root, None, "<folders>", f"expected subtask folders named {SUBTASKS}")
    return items


def load_mme_hf(path: str | Path, image_dir: str | Path | None = None, suffix: str = SHORT_ANSWER) -> list[dict]:
    """`lmms-lab/MME`: columns `question_id` (= `<category>/<image>`, shared by an image's two questions),
    `image`, `question`, `answer`, `category`; ids and pairing as for the official tool layout."""
    folder = image_folder(path, image_dir)
    by_subtask: dict[str, dict[str, list[tuple]]] = defaultdict(dict)
    where: dict[str, Path] = {}
    for file, row, obj in read_rows(path, ("question_id", "image", "question", "answer", "category")):
        subtask = obj["category"]
        if subtask not in SUBTASKS:
            raise DataFormatError(file, row, "category", f"expected one of the 14 MME subtasks, got {subtask!r}")
        image = str(obj["question_id"]).split("/", 1)[-1]
        if image not in by_subtask[subtask]:
            save_image(obj["image"], folder / subtask, image, file, row)
            by_subtask[subtask][image] = []
        by_subtask[subtask][image].append((row, image, obj["question"], obj["answer"], None))
        where[subtask] = file
    root = folder.resolve()
    return [
        item
        for subtask in SUBTASKS
        if subtask in by_subtask
        for item in mme_items(
            where[subtask], subtask, [r for pair in by_subtask[subtask].values() for r in pair], root, False, suffix
        )
    ]


def parse_mme(text: str, parser: Parser = "official") -> str | None:
    """MME yes/no. `official`: lower-cased; exactly yes/no, else 'yes' then 'no' searched in the first 4 characters."""
    if parser == "vlmevalkit":
        return yes_no_vlmevalkit(text)
    pred = text.lower()
    if parser == "lmms_eval":
        pred = pred.strip().replace(".", "")
        if pred in ("y", "n"):
            return "yes" if pred == "y" else "no"
    if pred in ("yes", "no"):
        return pred
    prefix = pred[:4]
    return "yes" if "yes" in prefix else "no" if "no" in prefix else None


class MME(Benchmark, name="mme"):
    """Per subtask acc, acc+ (both questions of an image right) and score = acc + acc+; perception, cognition."""

    fields = ("category", "image")
    values = {"category": SUBTASKS, "answer": ("yes", "no")}

    @staticmethod
    def correct(record: dict, parser: Parser) -> bool:
        return parse_mme(record["prediction"], parser) == str(record["answer"]).lower()

    @classmethod
    def score(cls, records: list[dict], parser: Parser) -> dict[str, float]:
        # subtask -> image -> whether each of its questions is right
        images: dict[str, dict[str, list[bool]]] = {subtask: defaultdict(list) for subtask in SUBTASKS}
        for record in records:
            if record["category"] not in images:
                raise ValueError(f"unknown MME subtask {record['category']!r}; expected one of {SUBTASKS}")
            images[record["category"]][record["image"]].append(cls.correct(record, parser))
        out = {}
        for subtask, answers in images.items():
            if not answers:
                continue
            right = [r for pair in answers.values() for r in pair]
            # Fraction first, then x100, in the official tool's order (the last decimal depends on it).
            acc = sum(right) / len(right) * 100
            acc_plus = sum(all(pair) for pair in answers.values()) / len(answers) * 100
            out.update(
                {f"mme/{subtask}/acc": acc, f"mme/{subtask}/acc_plus": acc_plus, f"mme/{subtask}/score": acc + acc_plus}
            )
        for name, group in (("perception", PERCEPTION), ("cognition", COGNITION)):
            scores = [out[f"mme/{s}/score"] for s in group if f"mme/{s}/score" in out]
            if scores:
                out[f"mme/{name}"] = sum(scores)
        return out
