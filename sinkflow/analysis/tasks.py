"""The registry of `analyze.py task=<name>` analyses and the context they run in.

Each task is `run(ctx: AnalysisContext) -> dict`, configured by its own section of conf/analyze.yaml.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from omegaconf import DictConfig
from rich.progress import track

from sinkflow.analysis import decode, massive_dims, probe, propagation, relevance
from sinkflow.analysis.context import AnalysisContext
from sinkflow.data.collate import batch_to
from sinkflow.data.datamodule import LVLMDataModule
from sinkflow.module import SinkflowModule

ANALYSES: dict[str, Callable[[AnalysisContext], dict]] = {
    "propagation": propagation.run,
    "massive_dims": massive_dims.run,
    "relevance": relevance.run,
    "decode": decode.run,
    "probe": probe.run,
}

# Checks of a task's settings against the LLM's depth, run before anything loads.
PREFLIGHTS: dict[str, Callable[[DictConfig, int], None]] = {
    "propagation": propagation.preflight,
    "massive_dims": massive_dims.preflight,
}


def analysis_context(cfg: DictConfig, module: SinkflowModule, datamodule: LVLMDataModule,
                     loggers: list) -> AnalysisContext:
    """The context of `cfg.task` over the dataset's evaluation sets (first `max_samples`, the task's own or the
    shared one; with `one_question_per_image`, only the first question about each image)."""
    settings = cfg[cfg.task]
    datamodule.prepare_data()
    datamodule.setup("test")
    samples = datamodule.test_set
    if cfg.one_question_per_image:
        samples = list({s["image"]: s for s in reversed(samples)}.values())[::-1]  # first question per image
    limit = settings.get("max_samples", cfg.max_samples)
    samples = samples[:limit] if limit is not None else samples
    batch_size = settings.get("batch_size", cfg.batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    collate = datamodule.generation_collator()

    def batches() -> Iterator[dict]:
        chunks = [samples[i:i + batch_size] for i in range(0, len(samples), batch_size)]
        for chunk in track(chunks, description=f"{cfg.task}: {len(samples)} samples"):
            yield batch_to(collate(chunk), module.device)

    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    return AnalysisContext(module=module, batches=batches, settings=settings, output_dir=output_dir,
                           loggers=loggers, task=cfg.task)
