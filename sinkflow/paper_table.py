"""The paper's table from a multirun (`experiment=paper_table`): rows = strategies, columns = the paper's benchmarks,
our number beside the published one (`sinkflow/paper/published.yaml`) and the difference.

A Hydra callback, like `sweep_table`: each job is one row (`+paper_row=<strategy>`, a conf/paper_row/ option) and
leaves its `metrics.json`; when the multirun ends the table is printed with rich and written to
`<sweep dir>/paper_table.md` and `.json`. Rows whose trained run is not given are left out of the sweep by the
`paper_table_rows` resolver (registered here, imported when Hydra builds this callback, before the sweeper reads its
parameters) and show as skipped.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from sinkflow.checks import choice
from sinkflow.data.errors import DataFormatError

log = logging.getLogger(__name__)

PUBLISHED = Path(__file__).resolve().parent / "paper" / "published.yaml"
# The model whose published numbers stand beside a model the paper does not report (a smoke run).
FALLBACK_MODEL = "llava15_7b"


@dataclass(frozen=True)
class Column:
    """A column of the paper's table: the sum of metric keys times `scale` (accuracies are fractions in
    metrics.json, percentages in the paper; MME's are points)."""

    name: str
    keys: tuple[str, ...]
    scale: float = 100.0


COLUMNS = (
    Column("GQA", ("gqa/overall",)),
    Column("SQA-IMG", ("scienceqa_img/overall",)),
    Column("TextVQA", ("textvqa/overall",)),
    Column("MMMU", ("mmmu/overall",)),
    Column("MME", ("mme/perception", "mme/cognition"), scale=1.0),
    Column("MME-Cog", ("mme/cognition",), scale=1.0),
    Column("MathVista", ("mathvista/overall",)),
    Column("MMStar", ("mmstar/overall",)),
    Column("CVBench", ("cvbench/overall",)),
)
# The paper's "LLaVA-eval AVG": the mean of these four columns.
AVERAGED = ("GQA", "SQA-IMG", "TextVQA", "MMMU")
AVG = "AVG"
NAMES = (*AVERAGED, AVG, *(c.name for c in COLUMNS if c.name not in AVERAGED))


def load_published(path: Path = PUBLISHED) -> dict[str, dict]:
    """The published numbers: model -> {"title", "rows": strategy -> column -> (value, source)}; each column of a
    row given once, every column one of NAMES."""
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise DataFormatError(path, None, "<file>", "expected a mapping of model config names")
    published = {}
    for model, entry in data.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("title"), str):
            raise DataFormatError(path, model, "title", "expected a string")
        rows = {}
        for strategy, sources in (entry.get("rows") or {}).items():
            where = f"{model}.rows.{strategy}"
            cells: dict[str, tuple[float, str]] = {}
            for source in sources:
                for column, value in source["values"].items():
                    if column not in NAMES:
                        raise DataFormatError(path, where, column, f"expected one of {NAMES}")
                    if column in cells:
                        raise DataFormatError(path, where, column, f"given twice ({cells[column][1]!r})")
                    if isinstance(value, bool) or not isinstance(value, (int, float)):
                        raise DataFormatError(path, where, column, f"expected a number, got {value!r}")
                    cells[column] = (float(value), source["source"])
            rows[strategy] = cells
        published[model] = {"title": entry["title"], "rows": rows}
    return published


def ours(metrics: dict[str, float]) -> dict[str, float]:
    """Our value of each column a job measured, in the paper's units; AVG only when all four of its columns are."""
    values = {
        column.name: column.scale * sum(metrics[k] for k in column.keys)
        for column in COLUMNS
        if all(k in metrics for k in column.keys)
    }
    if all(name in values for name in AVERAGED):
        values[AVG] = sum(values[name] for name in AVERAGED) / len(AVERAGED)
    return values


def rows_to_run(strategies: list[str], runs: dict[str, str | None]) -> list[str]:
    """The strategies with what they need: a row named in `runs` needs its run."""
    return [s for s in strategies if s not in runs or runs[s] is not None]


def _rows_resolver(settings) -> str:
    # The sweeper's parameter: a comma-separated choice list. It is read before any job starts, so a run that does
    # not exist stops the sweep here (Hydra turns a callback's exception into a warning).
    for key, run in {"base": settings.base, **{f"runs.{k}": v for k, v in settings.runs.items()}}.items():
        if run is not None and not Path(run).exists():
            raise FileNotFoundError(f"paper_table.{key}={run}: no such file or directory")
    kept = rows_to_run(list(settings.strategies), dict(settings.runs))
    if not kept:  # an empty list would sweep nothing
        raise ValueError("paper_table.strategies leaves no row to run")
    return ",".join(kept)


if not OmegaConf.has_resolver("paper_table_rows"):
    OmegaConf.register_new_resolver("paper_table_rows", _rows_resolver)


@dataclass
class Row:
    """One strategy of the table: `status` is "ran", "failed" (the job left no metrics) or "skipped"."""

    strategy: str
    status: str
    values: dict[str, float]


def read_rows(sweep_dir: Path, strategies: list[str]) -> tuple[list[Row], dict[str, str]]:
    """One row per strategy, in `strategies` order, from the jobs under `sweep_dir` (a strategy with no job was
    skipped), and the jobs' config choices (model, dataset)."""
    found, choices = {}, {}
    for job in (d for d in sweep_dir.iterdir() if (d / ".hydra" / "overrides.yaml").is_file()):
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or []
        row = dict(o.split("=", 1) for o in overrides if "=" in o).get("+paper_row")
        if row is None:
            continue
        hydra_yaml = job / ".hydra" / "hydra.yaml"
        if hydra_yaml.is_file():
            choices = yaml.safe_load(hydra_yaml.read_text())["hydra"]["runtime"]["choices"]
        metrics = job / "metrics.json"
        found[row] = Row(row, "ran", ours(json.loads(metrics.read_text()))) if metrics.is_file() else None
    rows = [found.get(s) or Row(s, "failed" if s in found else "skipped", {}) for s in strategies]
    return rows, choices


def paper_table(
    rows: list[Row], published: dict[str, dict], model: str, dataset: str, published_model: str | None = None
) -> dict:
    """The table as data: title, columns, and per row each column's ours / paper / diff / source."""
    compare = choice("paper_table.published_model", published_model, published) if published_model else None
    compare = compare or (model if model in published else FALLBACK_MODEL)
    reference = published[compare]
    smoke = model not in published or dataset == "shapes"
    title = f"{model} on {dataset} beside the paper's {reference['title']}"
    if smoke:
        title = (
            f"CPU SMOKE RUN, {model} on {dataset}: its numbers mean nothing next to the paper's {reference['title']}"
        )
    table_rows = []
    for row in rows:
        paper = reference["rows"].get(row.strategy, {})
        cells = {}
        for name in NAMES:
            mine = row.values.get(name)
            theirs, source = paper.get(name, (None, None))
            diff = None if mine is None or theirs is None else mine - theirs
            cells[name] = {"ours": mine, "paper": theirs, "diff": diff, "source": source}
        table_rows.append({"strategy": row.strategy, "status": row.status, "cells": cells})
    return {
        "title": title,
        "model": model,
        "dataset": dataset,
        "published_model": compare,
        "columns": list(NAMES),
        "rows": table_rows,
    }


# Each strategy takes three lines: our number, the published one, and ours minus the published one.
LINES = ("ours", "paper", "diff")


def lines_of(row: dict, columns: list[str]) -> list[list[str]]:
    """The row's three lines of cells (a row that did not run says so on its `ours` line)."""
    missing = "—" if row["status"] == "ran" else row["status"]
    texts = []
    for line in LINES:
        values = [row["cells"][name][line] for name in columns]
        blank = missing if line == "ours" else ""
        fmt = "{:+.2f}" if line == "diff" else "{:.2f}"
        texts.append([blank if v is None else fmt.format(v) for v in values])
    return texts


def to_markdown(table: dict) -> str:
    """The table in Markdown: a title line, then three lines per strategy."""
    columns = table["columns"]
    lines = [
        f"**{table['title']}**",
        "",
        "| strategy | | " + " | ".join(columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for row in table["rows"]:
        for line, cells in zip(LINES, lines_of(row, columns)):
            label = row["strategy"] if line == "ours" else ""
            lines.append(f"| {label} | {line} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def print_rich(table: dict) -> None:
    rich = Table(title=table["title"])
    rich.add_column("strategy")
    rich.add_column("")
    for name in table["columns"]:
        rich.add_column(name, justify="right")
    for row in table["rows"]:
        for line, cells in zip(LINES, lines_of(row, table["columns"])):
            rich.add_row(row["strategy"] if line == "ours" else "", line, *cells, end_section=line == LINES[-1])
    Console(width=max(150, Console().width)).print(rich)


class PaperTable(Callback):
    """Logs the rows a multirun skips when it starts; prints and writes the paper table when it ends."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        settings = config.paper_table
        for strategy in (s for s in settings.strategies if s in settings.runs and settings.runs[s] is None):
            log.info("paper_table: row %s skipped: no trained run (paper_table.runs.%s=<run dir>)", strategy, strategy)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        settings = config.paper_table
        rows, choices = read_rows(sweep_dir, list(settings.strategies))
        table = paper_table(
            rows, load_published(), choices.get("model", "?"), choices.get("dataset", "?"), settings.published_model
        )
        (sweep_dir / "paper_table.json").write_text(json.dumps(table, indent=2))
        (sweep_dir / "paper_table.md").write_text(to_markdown(table))
        print_rich(table)
        log.info("paper table written to %s", sweep_dir / "paper_table.md")
