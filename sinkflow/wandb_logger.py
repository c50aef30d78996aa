"""Lightning's W&B logger for a Hydra job: its run is named after the job and grouped by its sweep.

`conf/logger/wandb.yaml` builds it. A run left unnamed takes the job's overrides (`model.optim.lr=1e-3,seed=1`) and,
with none, the task's name; a run left ungrouped joins its sweep's group in a multirun (`<experiment or task>/<sweep
dir name>`) and its experiment's otherwise; `job_type` is the task (`train`, `evaluate`, `analyze`). Each job's run
is finished when the job ends (`sinkflow.loggers.close_job_loggers`), so the next job of a multirun starts its own.
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.loggers import WandbLogger


def job_name(overrides: list[str], task_name: str) -> str:
    """The job's command-line overrides as Hydra lists them (`key=value`, comma-joined), or the task's name."""
    return ",".join(overrides) or task_name


def job_group(multirun: bool, sweep_dir: str, experiment: str | None, task_name: str) -> str | None:
    """The sweep a multirun job belongs to (`<experiment or task>/<sweep dir name>`: the sweep's time stamp, unique
    per sweep), else the job's experiment (None without one)."""
    if multirun:
        return f"{experiment or task_name}/{Path(sweep_dir).name}"
    return experiment


class JobWandbLogger(WandbLogger):
    """`WandbLogger` whose `name` and `group` default to the Hydra job's (above) and which can log the run's export as
    an artifact (`log_export`, opt-in: a real model's adapter and projectors are large)."""

    def __init__(
        self, *, name: str | None = None, group: str | None = None, job_type: str, log_export: bool = False, **kwargs
    ):
        if HydraConfig.initialized():
            hydra = HydraConfig.get()
            name = name or job_name(list(hydra.overrides.task), job_type)
            multirun = hydra.mode == RunMode.MULTIRUN
            group = group or job_group(multirun, hydra.sweep.dir, hydra.runtime.choices.get("experiment"), job_type)
        super().__init__(name=name or job_type, group=group, job_type=job_type, **kwargs)
        # Lightning passes `anonymous=None` to wandb.init, which W&B warns about ("The anonymous setting has no
        # effect"); leaving it out changes nothing else.
        self._wandb_init.pop("anonymous", None)
        self.log_export = log_export

    def log_directory(self, path: Path, kind: str, metadata: dict) -> None:
        """A directory as a W&B artifact named `<kind>-<run id>` (offline: stored with the run, uploaded by sync)."""
        import wandb

        artifact = wandb.Artifact(f"{kind}-{self.experiment.id}", type=kind, metadata=metadata)
        artifact.add_dir(str(path))
        self.experiment.log_artifact(artifact)
