"""TextVQA (validation): the release's `TextVQA_0.5.1_val.json` with `train_images/` and `lmms-lab/textvqa`, the
EvalAI answer normalisation per parser, and VQA accuracy over the ten human answers (docs/benchmarks.md#textvqa)."""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter
from pathlib import Path

import numpy as np

from sinkflow.benchmarks.base import Benchmark, Parser
from sinkflow.benchmarks.common import SHORT_ANSWER
from sinkflow.benchmarks.hf_layout import data_files, image_folder, read_rows, save_image
from sinkflow.benchmarks.yes_no import vqa_punctuation
from sinkflow.checks import choice
from sinkflow.data.errors import DataFormatError
from sinkflow.data.files import field, image_path, question_rows

ANSWERS_PER_QUESTION = 10
OCR_LINE = "\nReference OCR token: "
RELEASE_FILE = "TextVQA_0.5.1_val.json"


def textvqa_prompt(question: str, ocr_tokens: list[str] | None = None, suffix: str = SHORT_ANSWER) -> str:
    """lmms-eval's prompt: the question through `str.capitalize` (first letter upper-cased, every other one
    lower-cased), the OCR line when tokens are given (even none), then the instruction."""
    ocr = "" if ocr_tokens is None else OCR_LINE + ", ".join(ocr_tokens)
    return question.capitalize() + ocr + suffix


def _strings(obj: dict, name: str, path: Path, where: int | str, count: int | None = None) -> list[str]:
    """obj[name] as a list of strings (of `count` of them when given)."""
    value = field(obj, name, list, path, where)
    if not all(isinstance(v, str) for v in value) or (count is not None and len(value) != count):
        wanted = f"{count} strings" if count is not None else "strings"
        raise DataFormatError(path, where, name, f"expected a list of {wanted}, got {value!r}")
    return value


def textvqa_item(
    entry: object,
    path: Path,
    where: int | str,
    root: Path,
    check_images: bool,
    suffix: str,
    ocr: bool,
    image_extension: str,
    seen: dict[int, int | str],
) -> dict:
    """One question (`question_id`, `question`, `image_id`, ten `answers`, and `ocr_tokens` with `ocr`) as an
    evaluation item."""
    if not isinstance(entry, dict):
        raise DataFormatError(path, where, "<entry>", f"expected a JSON object, got {type(entry).__name__}")
    question_id = field(entry, "question_id", int, path, where)
    if question_id in seen:
        raise DataFormatError(path, where, "question_id", f"duplicate id {question_id} (first at {seen[question_id]})")
    seen[question_id] = where
    question = field(entry, "question", str, path, where)
    image_id = field(entry, "image_id", str, path, where)
    if not image_id:
        raise DataFormatError(path, where, "image_id", "expected an image id, got an empty string")
    answers = _strings(entry, "answers", path, where, ANSWERS_PER_QUESTION)
    image = image_id + image_extension
    return {
        "benchmark": "textvqa",
        "id": str(question_id),
        "question_id": question_id,
        "question": question,
        "answer": consensus(answers),
        "answers": answers,
        "image": image,
        "image_path": image_path(root, image, check_images, path, where),
        "prompt": textvqa_prompt(question, _strings(entry, "ocr_tokens", path, where) if ocr else None, suffix),
    }


def consensus(answers: list[str]) -> str:
    """The answer shown as the record's `answer`: the first spelling of the most frequent answer after EvalAI
    normalisation (the first such answer on a tie). Scores read all ten `answers`."""
    normalised = [evalai_answer(a) for a in answers]
    best = Counter(normalised).most_common(1)[0][0]
    return answers[normalised.index(best)]


def load_textvqa(
    path: str | Path,
    image_root: str | Path,
    check_images: bool = False,
    suffix: str = SHORT_ANSWER,
    ocr: bool = False,
    image_extension: str = ".jpg",
) -> list[dict]:
    """The questions of `TextVQA_0.5.1_val.json` (`{"data": [...]}`) as evaluation items; image `<image_id>.jpg`
    under `image_root` (the release's `train_images/`, which holds the validation images). Errors name the entry
    as `data[<index>]`: the release is one line of JSON."""
    choice("dataset.eval_sets.textvqa.ocr", ocr, (False, True))
    path, root = Path(path), Path(image_root).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"TextVQA questions not found: {path} (the release's {RELEASE_FILE})")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise DataFormatError(path, None, "<encoding>", f"expected UTF-8 text ({err.reason})") from None
    except json.JSONDecodeError as err:
        raise DataFormatError(path, err.lineno, "<json>", f"expected a JSON document ({err.msg})") from None
    entries = document.get("data") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise DataFormatError(path, None, "data", "expected an object whose 'data' is the list of questions")
    seen: dict[int, int | str] = {}
    return [
        textvqa_item(entry, path, f"data[{i}]", root, check_images, suffix, ocr, image_extension, seen)
        for i, entry in question_rows(path, enumerate(entries))
    ]


HF_SPLITS = ("train", "validation", "test")


def validation_files(path: Path) -> list[Path]:
    """The validation files of a dataset path: a file as given; in a folder, those named after the split
    (`data/validation-*.parquet`, `validation/*.arrow`), or every file when none names a split (a folder of the
    validation split only)."""
    files = data_files(path)
    if path.is_file():
        return files

    def split(file: Path) -> str | None:
        folders = file.relative_to(path).parts[:-1]
        return next((s for s in HF_SPLITS if file.name.startswith(f"{s}-") or s in folders), None)

    splits = [split(f) for f in files]
    if not any(splits):
        return files
    if "validation" not in splits:
        raise DataFormatError(path, None, "<files>", "expected validation-*.parquet files or a validation/ folder")
    return [f for f, s in zip(files, splits) if s == "validation"]


def load_textvqa_hf(
    path: str | Path,
    image_dir: str | Path | None = None,
    suffix: str = SHORT_ANSWER,
    ocr: bool = False,
) -> list[dict]:
    """`lmms-lab/textvqa`, split `validation` (the hub snapshot also holds train and test: only the validation
    files are read): columns `question_id`, `question`, `image_id`, `image` (written as `<image_id>.jpg`),
    `answers`, and `ocr_tokens` with `ocr`."""
    choice("dataset.eval_sets.textvqa.ocr", ocr, (False, True))
    folder, items, seen = image_folder(path, image_dir), [], {}
    columns = ("question_id", "question", "image_id", "image", "answers") + (("ocr_tokens",) if ocr else ())
    for data in validation_files(Path(path)):
        for file, row, obj in read_rows(data, columns):
            items.append(textvqa_item(obj, file, row, folder.resolve(), False, suffix, ocr, ".jpg", seen))
            save_image(obj["image"], folder, items[-1]["image"], file, row)
    return items


# EvalAI's tables (identical in VLMEvalKit). Contractions: the spelling without apostrophes -> with them; the
# original's capitalised keys (Im, Ive, Id've, I'dve) never match lower-cased text and its two identities (let's,
# she's) change nothing, so they are left out; somebody'd -> somebodyd is the original's.
NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6"}
NUMBERS |= {"seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = ("a", "an", "the")
_CONTRACTION_PAIRS = """
    aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't couldn'tve=couldn't've couldnt've=couldn't've
    didnt=didn't doesnt=doesn't dont=don't hadnt=hadn't hadnt've=hadn't've hadn'tve=hadn't've hasnt=hasn't
    havent=haven't hed=he'd hed've=he'd've he'dve=he'd've hes=he's howd=how'd howll=how'll hows=how's isnt=isn't
    itd=it'd itd've=it'd've it'dve=it'd've itll=it'll maam=ma'am mightnt=mightn't mightnt've=mightn't've
    mightn'tve=mightn't've mightve=might've mustnt=mustn't mustve=must've neednt=needn't notve=not've oclock=o'clock
    oughtnt=oughtn't ow's'at='ow's'at 'ows'at='ow's'at 'ow'sat='ow's'at shant=shan't shed've=she'd've
    she'dve=she'd've shouldve=should've shouldnt=shouldn't shouldnt've=shouldn't've shouldn'tve=shouldn't've
    somebody'd=somebodyd somebodyd've=somebody'd've somebody'dve=somebody'd've somebodyll=somebody'll
    somebodys=somebody's someoned=someone'd someoned've=someone'd've someone'dve=someone'd've someonell=someone'll
    someones=someone's somethingd=something'd somethingd've=something'd've something'dve=something'd've
    somethingll=something'll thats=that's thered=there'd thered've=there'd've there'dve=there'd've therere=there're
    theres=there's theyd=they'd theyd've=they'd've they'dve=they'd've theyll=they'll theyre=they're theyve=they've
    twas='twas wasnt=wasn't wed've=we'd've we'dve=we'd've weve=we've werent=weren't whatll=what'll whatre=what're
    whats=what's whatve=what've whens=when's whered=where'd wheres=where's whereve=where've whod=who'd
    whod've=who'd've who'dve=who'd've wholl=who'll whos=who's whove=who've whyll=why'll whyre=why're whys=why's
    wont=won't wouldve=would've wouldnt=wouldn't wouldnt've=wouldn't've wouldn'tve=wouldn't've yall=y'all
    yall'll=y'all'll y'allll=y'all'll yall'd've=y'all'd've y'alld've=y'all'd've y'all'dve=y'all'd've youd=you'd
    youd've=you'd've you'dve=you'd've youll=you'll youre=you're youve=you've
    """
CONTRACTIONS = dict(pair.split("=") for pair in _CONTRACTION_PAIRS.split())
# VLMEvalKit's corrected period pattern: a period goes only when no digit stands on either side ("2." stays).
_PERIOD_WITHOUT_DIGITS = re.compile(r"(?<!\d)\.(?!\d)")


def _digits_articles(text: str) -> str:
    """Lower-cased words, number words as digits, articles dropped, contractions given their apostrophes."""
    words = [NUMBERS.get(word, word) for word in text.lower().split()]
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


def evalai_answer(text: str) -> str:
    """EvalAI's answer processor (m4c's and lmms-eval's `EvalAIAnswerProcessor`): lower-case, delete `,` and `?`,
    split `'s` off, newlines and tabs to spaces, VQA-eval's punctuation pass, then numbers, articles, contractions."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    # Without commas the pass's comma-between-digits test never fires: it is VQA-eval's function unchanged.
    return _digits_articles(vqa_punctuation(text))


def vlmevalkit_answer(text: str) -> str:
    """VLMEvalKit's `process_answer`: no lower-casing or `,` / `?` / `'s` handling first, so its punctuation pass
    sees commas (one between digits deletes every punctuation mark instead of spacing it) and `?`; periods go only
    with no digit on either side; then numbers, articles, contractions."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _digits_articles(vqa_punctuation(text, period=_PERIOD_WITHOUT_DIGITS))


def leave_one_out(prediction: str, answers: list[str]) -> list[float]:
    """For each human answer left out in turn, min(1, matches of the prediction among the other answers / 3)."""
    matches = sum(answer == prediction for answer in answers)
    return [min(1, (matches - (answer == prediction)) / 3) for answer in answers]


def question_score(record: dict, parser: Parser) -> float:
    """VQA accuracy of one prediction: the mean of its leave-one-out accuracies, averaged as each toolkit does it
    (the last bit differs: m4c's `sum / len` in answer order, lmms-eval's exact `statistics.mean`, VLMEvalKit's
    pairwise `np.mean`)."""
    normalise = vlmevalkit_answer if parser == "vlmevalkit" else evalai_answer
    accs = leave_one_out(normalise(record["prediction"]), [normalise(a) for a in record["answers"]])
    if parser == "official":
        return sum(accs) / len(accs)
    if parser == "lmms_eval":
        return float(statistics.mean(accs))
    return float(np.mean(accs))


class TextVQA(Benchmark, name="textvqa"):
    """`textvqa/overall`: the mean VQA accuracy (a fraction; the toolkits print it x 100). TextVQA has no
    categories, so there is no other key."""

    # A right/wrong hit (full credit) is not the soft score the benchmark reports: none enters `all/<scope>`.
    counts_in_all = False

    @staticmethod
    def correct(record: dict, parser: Parser) -> bool:
        """Full credit: the prediction matches at least four of the ten answers."""
        return question_score(record, parser) == 1

    @classmethod
    def record_problem(cls, record: dict) -> tuple[str, str] | None:
        answers = record.get("answers")
        if not (
            isinstance(answers, list)
            and len(answers) == ANSWERS_PER_QUESTION
            and all(isinstance(a, str) for a in answers)
        ):
            return "answers", f"expected a list of {ANSWERS_PER_QUESTION} strings for textvqa, got {answers!r}"
        question_id = record.get("question_id")
        if not isinstance(question_id, int) or isinstance(question_id, bool):
            return "question_id", f"expected an integer for textvqa, got {question_id!r}"
        return None

    @classmethod
    def score(cls, records: list[dict], parser: Parser) -> dict[str, float]:
        # Summed in question_id order (the release's), whatever order the ranks joined the records in.
        scores = [question_score(r, parser) for r in sorted(records, key=lambda r: r["question_id"])]
        overall = float(np.mean(scores)) if parser == "vlmevalkit" else sum(scores) / len(scores)
        return {"textvqa/overall": overall}
