"""Lightning callback: stream test predictions to the predictions file and score them at the end.

Under DDP every rank's records are gathered on rank 0 and deduplicated by (benchmark, id), so the sampler's
padding duplicates never count twice and the scores equal a single-process evaluation.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch.distributed as dist

from sinkflow.eval.metrics import score_records
from sinkflow.eval.predictions import PredictionsWriter, read_predictions


def gather_objects(items: list) -> list:
    """Concatenate a list from every rank (identity without a process group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(items)
    buckets = [None] * dist.get_world_size()
    dist.all_gather_object(buckets, list(items))
    return [item for bucket in buckets for item in bucket]


class PredictionsCallback(L.Callback):
    """Writes `predictions.jsonl` as batches finish and `metrics.json` when the test epoch ends."""

    def __init__(self, predictions_path: str, resume: bool = True):
        self.path = Path(predictions_path)
        self.resume = resume
        self.writer: PredictionsWriter | None = None
        self.metrics: dict[str, float] = {}

    def on_test_epoch_start(self, trainer, pl_module):
        if trainer.is_global_zero:
            self.writer = PredictionsWriter(self.path, resume=self.resume)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        records = gather_objects(outputs)
        if trainer.is_global_zero:
            self.writer.append(records)

    def on_test_epoch_end(self, trainer, pl_module):
        if not trainer.is_global_zero:
            return
        self.metrics = score_records(read_predictions(self.path)) if self.path.exists() else {}
        self.path.with_name("metrics.json").write_text(json.dumps(self.metrics, indent=2))
        for logger in trainer.loggers:
            logger.log_metrics({f"test/{k}": v for k, v in self.metrics.items()}, step=trainer.global_step)
