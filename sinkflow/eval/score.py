"""Score a predictions file without a model: `python -m sinkflow.eval.score PREDICTIONS [--parser R] [--out F]`.

PREDICTIONS is a sinkflow predictions file (JSON lines, DESIGN.md §3; ours or converted from another toolkit) or
an MME eval_tool results folder (the 14 `<subtask>.txt` files with the model's responses as a 4th column).
`--parser official` (the default) reproduces each benchmark's official tool; `lmms_eval` and `vlmevalkit` apply
those toolkits' answer rules (and, for MMStar under lmms_eval, its macro averages).

MMStar's multi-modal gain and leakage: score the with-image file and pass the same model's answers without images
(`evaluate.py dataset.without_images=true`) as `--without-image`, and the base LLM's as `--text-only`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from sinkflow.data.benchmarks.mme import load_mme_results
from sinkflow.eval.metrics import multimodal_gain, score_records
from sinkflow.eval.parsing import RULES
from sinkflow.eval.predictions import read_predictions


def load_records(path: Path) -> list[dict]:
    """Prediction records of a predictions file or an MME results folder."""
    if path.is_dir():
        return load_mme_results(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: neither a predictions file (JSON lines) nor an MME results folder")
    return read_predictions(path)


def print_table(metrics: dict[str, float], title: str) -> None:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4f}")
    Console().print(table)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(prog="python -m sinkflow.eval.score", description=__doc__.splitlines()[0])
    parser.add_argument("predictions", type=Path, help="predictions .jsonl or an MME eval_tool results folder")
    parser.add_argument("--parser", choices=RULES, default="official", help="answer parsing rule (default official)")
    parser.add_argument("--out", type=Path, help="write the metrics as flat JSON here")
    parser.add_argument("--without-image", type=Path, help="the same model's MMStar answers without images (MG)")
    parser.add_argument("--text-only", type=Path, help="the base LLM's MMStar answers without images (ML)")
    args = parser.parse_args(argv)
    metrics = score_records(load_records(args.predictions), args.parser)
    if args.without_image:
        text_only = score_records(load_records(args.text_only), args.parser) if args.text_only else None
        metrics.update(multimodal_gain(metrics, score_records(load_records(args.without_image), args.parser),
                                       text_only))
    elif args.text_only:
        parser.error("--text-only needs --without-image (leakage compares the two)")
    print_table(metrics, f"{args.predictions} ({args.parser} parser)")
    if args.out:
        args.out.write_text(json.dumps(metrics, indent=2))
    return metrics


if __name__ == "__main__":
    main()
