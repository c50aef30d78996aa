"""Score a predictions file without a model: `python -m sinkflow.eval.score PREDICTIONS [--parser R] [--out F]`.

PREDICTIONS is a sinkflow predictions file (JSON lines, the README's contract; ours or converted from another
toolkit) or an MME eval_tool results folder (the 14 `<subtask>.txt` files with the model's responses as a 4th
column). `--parser official` (the default) reproduces each benchmark's official tool; `lmms_eval` and `vlmevalkit`
apply those toolkits' answer rules (and, for MMStar under lmms_eval, its macro averages).

Records of a benchmark the scorer does not know (a misspelt name) are an error; `--allow-unknown` scores them by
first-word exact match under `<name>/accuracy`, outside the `all/*` aggregates.

MathVista answers that no rule extracts count as wrong (`mathvista/unextracted`); `--judge PATH` asks a local
causal LM for them with the official extraction prompt.

MMStar's multi-modal gain and leakage: score the with-image file and pass the same model's answers without images
(`evaluate.py dataset.without_images=true`) as `--without-image`, and the base LLM's as `--text-only`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import get_args

from rich.console import Console
from rich.table import Table

from sinkflow.benchmarks.base import BENCHMARKS, Parser
from sinkflow.benchmarks.mathvista_judge import LocalJudge, judge_records
from sinkflow.benchmarks.mme import load_mme_results
from sinkflow.data.errors import DataFormatError
from sinkflow.data.predictions import read_numbered_predictions
from sinkflow.eval.metrics import benchmark_problem, multimodal_gain, score_records
from sinkflow.eval.results import now, recorded_provenance, results_document, write_results


def load_records(path: Path, allow_unknown: bool = False) -> list[dict]:
    """Prediction records of a predictions file or an MME results folder (which `load_mme` checks: an empty
    subtask file is an error there); a file without records or with an unknown benchmark is an error."""
    if path.is_dir():
        return load_mme_results(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: neither a predictions file (JSON lines) nor an MME results folder")
    numbered = read_numbered_predictions(path)
    if not numbered:
        raise DataFormatError(path, None, "<file>", "no prediction records: the file holds none")
    for line_no, record in numbered:
        problem = benchmark_problem(record["benchmark"], allow_unknown)
        if problem:
            hint = "" if allow_unknown else " (--allow-unknown scores it by first-word exact match, outside all/*)"
            raise DataFormatError(path, line_no, "benchmark", problem + hint)
    return [record for _, record in numbered]


def print_table(metrics: dict[str, float], title: str) -> None:
    """The metrics as a two-column table on the console."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4f}")
    Console().print(table)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(prog="python -m sinkflow.eval.score", description=__doc__.splitlines()[0])
    parser.add_argument("predictions", type=Path, help="predictions .jsonl or an MME eval_tool results folder")
    parser.add_argument(
        "--parser", choices=get_args(Parser), default="official", help="answer parser (default official)"
    )
    parser.add_argument("--out", type=Path, help="write the metrics as flat JSON here")
    parser.add_argument(
        "--results",
        type=Path,
        help="write results.json here: the scores with question counts, the parser, versions and what the run beside "
        "the predictions recorded (model, strategy, seed)",
    )
    parser.add_argument("--without-image", type=Path, help="the same model's MMStar answers without images (MG)")
    parser.add_argument("--text-only", type=Path, help="the base LLM's MMStar answers without images (ML)")
    parser.add_argument(
        "--allow-unknown",
        action="store_true",
        help=f"score benchmarks other than {', '.join(BENCHMARKS.names())} by first-word exact match, outside all/*",
    )
    parser.add_argument(
        "--judge",
        type=Path,
        help="a local causal LM that extracts the MathVista answers no rule extracts (default none)",
    )
    args = parser.parse_args(argv)
    if args.text_only and not args.without_image:
        parser.error("--text-only needs --without-image (leakage compares the two)")
    return score_files(args, None if argv is None else ["-m", "sinkflow.eval.score", *argv])


def score_files(args: argparse.Namespace, argv: list[str] | None) -> dict[str, float]:
    """Score the files the arguments name, print the table and write what `--out` / `--results` ask for (`argv`: the
    command recorded there; None: this process's)."""
    started = now()
    judge = LocalJudge(args.judge) if args.judge else None

    def records_of(path: Path) -> list[dict]:
        records = load_records(path, args.allow_unknown)
        return judge_records(records, args.parser, judge) if judge is not None else records

    records = records_of(args.predictions)
    metrics = score_records(records, args.parser, args.allow_unknown)
    if args.without_image:
        without = score_records(records_of(args.without_image), args.parser, args.allow_unknown)
        text_only = (
            score_records(records_of(args.text_only), args.parser, args.allow_unknown) if args.text_only else None
        )
        metrics.update(multimodal_gain(metrics, without, text_only))
    print_table(metrics, f"{args.predictions} ({args.parser} parser)")
    if args.out:
        args.out.write_text(json.dumps(metrics, indent=2))
    if args.results:
        provenance = recorded_provenance(args.predictions)
        write_results(args.results, results_document(metrics, records, args.parser, provenance, started, argv))
    return metrics


def cli() -> None:
    """`python -m sinkflow.eval.score`: bad input is one line on stderr (it names the file, line and field), exit 1,
    no traceback."""
    try:
        main()
    except (OSError, ValueError) as err:  # DataFormatError is a ValueError
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    cli()
