"""Hydra callback: when a multirun ends, one table of the jobs' metrics (rows: each job's overrides).

It reads what every job left in its own directory (`metrics.json`, `.hydra/overrides.yaml`), so it works with any
launcher; a job that wrote no metrics shows as `failed` rather than vanishing from the table.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def job_label(job_dir: Path, swept: list[str]) -> str:
    """The job's values of the swept keys (all its overrides if none are named)."""
    overrides = yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text()) or []
    pairs = dict(o.split("=", 1) for o in overrides if "=" in o)
    keys = [k for k in swept if k in pairs] or list(pairs)
    return ", ".join(pairs[k] if len(keys) == 1 else f"{k}={pairs[k]}" for k in keys)


def sweep_table(sweep_dir: Path, metrics: list[str], swept: list[str]) -> str:
    """A Markdown table: one row per job directory under `sweep_dir`, one column per metric."""
    header = f"| {' / '.join(swept) or 'job'} | " + " | ".join(metrics) + " |"
    lines = [header, "|" + "---|" * (len(metrics) + 1)]
    jobs = sorted((d for d in sweep_dir.iterdir() if (d / ".hydra").is_dir()), key=lambda d: (len(d.name), d.name))
    for job in jobs:
        path = job / "metrics.json"
        values = json.loads(path.read_text()) if path.exists() else None
        cells = (
            ["failed"] * len(metrics)
            if values is None
            else [f"{values[m]:.3f}" if m in values else "—" for m in metrics]
        )
        lines.append(f"| {job_label(job, swept)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


class SweepTable(Callback):
    """Writes `<sweep dir>/table.md` and prints it when the multirun ends."""

    def __init__(self, metrics: list[str], filename: str = "table.md"):
        self.metrics, self.filename = list(metrics), filename

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        swept = list((config.hydra.sweeper.get("params") or {}).keys())
        table = sweep_table(sweep_dir, self.metrics, swept)
        (sweep_dir / self.filename).write_text(table)
        print(f"\n{table}")
        log.info("sweep table written to %s", sweep_dir / self.filename)
