"""Open short-answer questions (VQAv2 / GQA style), benchmark `open`: JSON lines of question, answer, image, category.

One object per line: `question_id` (int, unique in the file), `image` (path under the image root), `question`,
`answer` (a single word or phrase) and `category`. The prompt is LLaVA-1.5's short-answer prompt, as for GQA and
VQAv2; scoring is an exact match of the first word (`Benchmark`'s default), the same under every parser.
"""

from __future__ import annotations

from pathlib import Path

from sinkflow.benchmarks.base import Benchmark
from sinkflow.benchmarks.common import short_answer_prompt
from sinkflow.data.errors import DataFormatError
from sinkflow.data.files import field, image_path, read_jsonl


def load_open_qa(path: str | Path, image_root: str | Path, check_images: bool = False) -> list[dict]:
    """Load open questions as evaluation items of the benchmark `open`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"open questions not found: {path} (JSON lines of question_id, image, question, answer, category)"
        )
    root = Path(image_root).resolve()
    items, seen = [], {}
    for line_no, obj in read_jsonl(path):
        question_id = field(obj, "question_id", int, path, line_no)
        if question_id in seen:
            raise DataFormatError(
                path, line_no, "question_id", f"duplicate id {question_id} (first at line {seen[question_id]})"
            )
        seen[question_id] = line_no
        image = field(obj, "image", str, path, line_no)
        question = field(obj, "question", str, path, line_no)
        answer = field(obj, "answer", str, path, line_no)
        if not answer.strip():
            raise DataFormatError(path, line_no, "answer", "empty answer")
        items.append(
            {
                "benchmark": "open",
                "id": str(question_id),
                "question_id": question_id,
                "category": field(obj, "category", str, path, line_no),
                "question": question,
                "answer": answer,
                "image": image,
                "image_path": image_path(root, image, check_images, path, line_no),
                "prompt": short_answer_prompt(question),
            }
        )
    return items


class OpenQA(Benchmark, name="open"):
    """`open/accuracy` and `open/<category>/accuracy` by first-word exact match. Only the generated shapes data
    writes such questions: there is no release to configure in conf/dataset/benchmarks.yaml."""

    shapes_only = True
