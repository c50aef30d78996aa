"""A job's loggers (`cfg.logger`): built, sent the composed config and figures, and closed when the job ends.

`close_job_loggers` finalizes every logger `build_loggers` made and finishes the process's W&B run. W&B keeps one run
per process (`wandb.run`), and Lightning's `WandbLogger` reuses a run in progress, so a multirun whose jobs did not
finish theirs would log every job into the first job's run. `sinkflow.job.job` calls it after every entry point's
task, whether the task returns or raises.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Literal

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

_built: list = []  # the loggers built for the running job, closed by close_job_loggers


def build_loggers(cfg: DictConfig) -> list:
    """The Lightning loggers of `cfg.logger` (none when the group is `none`)."""
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values()]
    _built.extend(loggers)
    return loggers


def log_config(loggers: list, cfg: DictConfig, extra: dict | None = None) -> None:
    """The resolved config (and `extra`, e.g. parameter counts) as every logger's hyperparameters."""
    params = {**OmegaConf.to_container(cfg, resolve=True), **(extra or {})}
    for logger in loggers:
        logger.log_hyperparams(params)


def log_images(loggers: list, images: dict[str, Path], step: int | None = None) -> None:
    """PNG files, by key, to the loggers that take images (W&B); the others keep the files only."""
    for logger in loggers:
        if hasattr(logger, "log_image"):
            for key, path in images.items():
                logger.log_image(key=key, images=[str(path)], step=step)


def log_summary_table(loggers: list, key: str, summary: dict) -> None:
    """A JSON summary as a two-column W&B table (`key`, `value`; nested keys `/`-joined, non-numbers as JSON), so
    that what a scalar logger cannot take (lists, strings, histograms) shows too."""
    from lightning.pytorch.loggers import WandbLogger

    wandb_loggers = [logger for logger in loggers if isinstance(logger, WandbLogger)]
    if not wandb_loggers:
        return
    import wandb

    rows = [[name, json.dumps(value)] for name, value in leaves(summary).items()]
    for logger in wandb_loggers:
        logger.experiment.log({key: wandb.Table(columns=["key", "value"], data=rows)})


def leaves(summary: dict, prefix: str = "") -> dict[str, object]:
    """Every non-dict value of a nested summary under its `/`-joined key."""
    out: dict[str, object] = {}
    for key, value in summary.items():
        if isinstance(value, dict) and value:
            out.update(leaves(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


def close_job_loggers(status: Literal["success", "failed"]) -> None:
    """Finalize the loggers built for the job (files flushed, hyperparameters saved) and finish the W&B run in
    progress with the job's exit code, so that the next job of a multirun starts its own run."""
    while _built:
        _built.pop().finalize(status)
    wandb = sys.modules.get("wandb")  # not imported: no run was ever started
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=0 if status == "success" else 1)
