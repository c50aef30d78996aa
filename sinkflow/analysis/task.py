"""What an `analyze.py` task declares, and the registry that finds every task by importing `sinkflow.analysis`.

A task module ends with `ANALYSES.register("<name>", Analysis(run, ...))`; `analyze.py task=<name>` then finds it
and reads its settings from the `<name>` section of conf/analyze.yaml. Modules that register nothing (the context,
the capture hooks, the scene labels) are helpers of the tasks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from sinkflow.registry import Registry

if TYPE_CHECKING:
    from sinkflow.analysis.context import AnalysisContext


@dataclass(frozen=True)
class Analysis:
    """An `analyze.py` task: `run` computes and writes its summary; `preflight`, when given, checks the task's
    settings against the LLM's depth (read from its config alone) before the model or the data load."""

    run: Callable[[AnalysisContext], dict]
    preflight: Callable[[DictConfig, int], None] | None = None


ANALYSES: Registry[Analysis] = Registry("analysis task", "sinkflow.analysis")
