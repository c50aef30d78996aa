"""Loader for MME in the official eval_tool layout (`<subtask>.txt`: image, question, answer[, response])."""
from __future__ import annotations

from pathlib import Path

from sinkflow.data.benchmarks.common import SHORT_ANSWER, read_lines, short_answer_prompt
from sinkflow.data.errors import DataFormatError

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
            raise DataFormatError(path, line_no, "<line>",
                                  f"expected 3 tab-separated fields (image, question, answer), got {len(fields)}")
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
            raise DataFormatError(path, line_no, "image",
                                  f"expected {rows[k - 1][1]!r} (pair of line {rows[k - 1][0]}), got {image!r}")
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


def load_mme(directory: str | Path, image_root: str | Path, check_images: bool = False,
             suffix: str = SHORT_ANSWER) -> list[dict]:
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
    return [item for name in SUBTASKS if name in files
            for item in _read_subtask(files[name], root, check_images, suffix)]


def load_mme_results(directory: str | Path) -> list[dict]:
    """Prediction records from an MME eval_tool results folder (`<subtask>.txt` with a 4th, response column)."""
    records = load_mme(directory, directory)
    missing = [r for r in records if "prediction" not in r]
    if missing:
        raise DataFormatError(Path(directory) / f"{missing[0]['category']}.txt", None, "response",
                              f"{len(missing)} lines have no 4th (model response) column: not a results folder")
    return records


IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg")


def load_mme_release(root: str | Path, check_images: bool = False, suffix: str = SHORT_ANSWER) -> list[dict]:
    """Load MME from its release folders (`MME_Benchmark_release_version/<subtask>/`): either `images/` beside
    `questions_answers_YN/`, or images beside their question files; each `NNNN.txt` holds an image's two
    `question<TAB>answer` lines. Ids and pairing are those of the eval_tool layout."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"MME release not found: {root} (expected MME_Benchmark_release_version/ with one "
                                "folder per subtask)")
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
                    raise DataFormatError(path, line_no, "<line>", f"expected question<TAB>answer, got {len(fields)} "
                                                                   "fields")
                if fields[1] not in ("Yes", "No"):
                    raise DataFormatError(path, line_no, "answer", f"expected 'Yes' or 'No', got {fields[1]!r}")
                rows.append((line_no, image, fields[0], fields[1], None))
            items += mme_items(path, subtask, rows, root.resolve(), check_images, suffix)
    if not items:
        raise DataFormatError(root, None, "<folders>", f"expected subtask folders named {SUBTASKS}")
    return items
