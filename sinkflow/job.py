"""What every entry point's job does around its task: the config's `extras` first, every logger closed last.

`sinkflow.run` decorates `train`, `evaluate` and `analyze` with `job`, so that no entry point can forget to finish its
W&B run: in a multirun, a job that left its run open would have the next job log into it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

from omegaconf import DictConfig

from sinkflow.extras import apply_extras
from sinkflow.loggers import close_job_loggers

Result = TypeVar("Result")


def job(task: Callable[[DictConfig], Result]) -> Callable[[DictConfig], Result]:
    """`task(cfg)` after `apply_extras(cfg)`; its loggers are closed when it returns ("success") or raises
    ("failed")."""

    @functools.wraps(task)
    def run(cfg: DictConfig) -> Result:
        try:
            apply_extras(cfg)
            result = task(cfg)
        except BaseException:
            close_job_loggers("failed")
            raise
        close_job_loggers("success")
        return result

    return run
