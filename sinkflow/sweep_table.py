"""The table of a multirun: one row per job, its swept overrides and chosen metrics as columns.

`SweepTable` (a Hydra callback, on for every multirun through conf/hydra/default.yaml) writes `table.md` and
`table.csv` into the sweep directory after each job and prints the Markdown when the multirun ends; `python -m
sinkflow.sweep_table <sweep dir>` tabulates a sweep afterwards (one that was killed, or still runs). Both read only
what each job left in its own directory (`.hydra/overrides.yaml`, `metrics.json`, `failed.txt`), so they work with
any launcher (local, submitit, SLURM) and sweeper (grid, Optuna). A job without metrics shows as `failed` when it
raised (`failed.txt` says why) and as `missing` otherwise (killed, still running, or a run that tests nothing).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

# The headline scores of every benchmark sinkflow scores, the columns when a sweep names none.
HEADLINE = r"all/[^/]+/accuracy|[^/]+/overall|pope/f1_mean|mme/(perception|cognition)|open/accuracy"
FAILED = "failed.txt"  # written into a job's directory when it raised: the exception, one line


@dataclass
class Job:
    """What one job left in its directory."""

    name: str
    overrides: dict[str, str]
    metrics: dict[str, float] | None
    failed: bool


def read_jobs(sweep_dir: Path) -> list[Job]:
    """The jobs under `sweep_dir` (its sub-directories with a `.hydra` folder), in job-number order."""
    jobs = []
    for directory in sorted(sweep_dir.iterdir(), key=lambda d: (len(d.name), d.name)):
        if not (directory / ".hydra" / "overrides.yaml").is_file():
            continue
        overrides = yaml.safe_load((directory / ".hydra" / "overrides.yaml").read_text()) or []
        metrics = directory / "metrics.json"
        jobs.append(
            Job(
                name=directory.name,
                overrides=dict(o.split("=", 1) for o in overrides if "=" in o),
                metrics=json.loads(metrics.read_text()) if metrics.is_file() else None,
                failed=(directory / FAILED).is_file(),
            )
        )
    return jobs


def override_columns(jobs: list[Job], swept: Sequence[str]) -> list[str]:
    """The override keys that tell the jobs apart: the sweeper's parameters and every key whose value differs between
    jobs, in the order they first appear; for a sweep of one job (or of identical jobs), all its overrides."""
    keys = list(dict.fromkeys(k for job in jobs for k in job.overrides))
    varying = [k for k in keys if k in swept or len({job.overrides.get(k) for job in jobs}) > 1]
    return varying or keys


def metric_columns(jobs: list[Job], metrics: Sequence[str] | None, pattern: str, first: str | None) -> list[str]:
    """`metrics` as given; else `first` (the optimized metric) and every metric of the jobs that `pattern` matches
    whole, sorted."""
    if metrics:
        return list(metrics)
    found = sorted({k for job in jobs for k in job.metrics or {} if re.fullmatch(pattern, k)})
    return list(dict.fromkeys(([first] if first else []) + found))


def rows(jobs: list[Job], overrides: list[str], metrics: list[str]) -> list[list[str | float]]:
    """One row per job: its name, its values of `overrides` and of `metrics` (`—` where it lacks one, `failed` /
    `missing` in every metric cell of a job without metrics)."""
    table = []
    for job in jobs:
        if job.metrics is None:
            cells: list[str | float] = ["failed" if job.failed else "missing"] * len(metrics)
        else:
            cells = [job.metrics.get(m, "—") for m in metrics]
        table.append([job.name, *(job.overrides.get(k, "") for k in overrides), *cells])
    return table


def markdown(header: list[str], body: list[list[str | float]]) -> str:
    """A Markdown table, numbers to 3 decimals."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(f"{c:.3f}" if isinstance(c, float) else str(c) for c in row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def comma_separated(header: list[str], body: list[list[str | float]]) -> str:
    """The same table as CSV, numbers at full precision."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(body)
    return out.getvalue()


def write_tables(
    sweep_dir: Path,
    metrics: Sequence[str] | None = None,
    swept: Sequence[str] = (),
    pattern: str = HEADLINE,
    first: str | None = None,
) -> str:
    """Write `table.md` and `table.csv` of the jobs under `sweep_dir` (each replaced whole, as jobs of a parallel
    launcher finish at once) and return the Markdown."""
    jobs = read_jobs(sweep_dir)
    overrides = override_columns(jobs, swept)
    columns = metric_columns(jobs, metrics, pattern, first)
    header = ["job", *(k.lstrip("+~") for k in overrides), *columns]
    body = rows(jobs, overrides, columns)
    table = markdown(header, body)
    for name, text in (("table.md", table), ("table.csv", comma_separated(header, body))):
        partial = sweep_dir / f".{name}.{os.getpid()}"
        partial.write_text(text)
        os.replace(partial, sweep_dir / name)
    return table


def swept_keys(config: DictConfig) -> list[str]:
    """The keys the sweeper's `params` sweep (the grid of an experiment, Optuna's search space)."""
    return list((OmegaConf.select(config, "hydra.sweeper.params") or {}).keys())


class SweepTable(Callback):
    """Keeps `<sweep dir>/table.{md,csv}` up to date as jobs end (a job that raises also leaves `failed.txt`) and
    prints the table when the multirun ends. `metrics`: the columns; none: the optimized metric and the headline
    metrics (`pattern`) the jobs wrote."""

    def __init__(self, metrics: Sequence[str] | None = None, pattern: str = HEADLINE):
        self.metrics, self.pattern = list(metrics or []), pattern

    def tabulate(self, config: DictConfig) -> str:
        return write_tables(
            Path(config.hydra.sweep.dir), self.metrics, swept_keys(config), self.pattern, config.get("optimized_metric")
        )

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        try:
            job_return.return_value  # noqa: B018  (raises the job's exception when it failed)
        except Exception as error:  # whatever the job raised is recorded here; Hydra reports it
            message = f"{type(error).__name__}: {error}".splitlines()[0]
            (Path(config.hydra.runtime.output_dir) / FAILED).write_text(message + "\n")
        self.tabulate(config)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        table = self.tabulate(config)
        print(f"\n{table}")
        log.info("sweep table written to %s", Path(config.hydra.sweep.dir) / "table.md")


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m sinkflow.sweep_table DIR [--metrics ...] [--pattern RE]`: the table of a sweep directory."""
    parser = argparse.ArgumentParser(prog="python -m sinkflow.sweep_table", description=main.__doc__)
    parser.add_argument("sweep_dir", type=Path, help="a multirun directory (logs/<task>/multiruns/<time>)")
    parser.add_argument("--metrics", nargs="+", help="metric keys, one column each (default: the headline ones)")
    parser.add_argument("--pattern", default=HEADLINE, help="without --metrics: the metric keys shown (a regex)")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        parser.error(f"{args.sweep_dir}: no such directory")
    if not read_jobs(args.sweep_dir):
        parser.error(f"{args.sweep_dir}: no job directories (sub-directories with .hydra/overrides.yaml)")
    saved = args.sweep_dir / "multirun.yaml"  # the sweep's config, written when it started
    config = OmegaConf.load(saved) if saved.is_file() else OmegaConf.create()
    first = OmegaConf.select(config, "optimized_metric", default=None, throw_on_resolution_failure=False)
    print(write_tables(args.sweep_dir, args.metrics, swept_keys(config), args.pattern, first), end="")


if __name__ == "__main__":
    main()
