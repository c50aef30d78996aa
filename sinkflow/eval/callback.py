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
from sinkflow.eval.parsing import check_rule
from sinkflow.eval.predictions import PredictionsWriter, read_predictions


def gather_objects(items: list) -> list:
    """Concatenate a list from every rank (identity without a process group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(items)
    buckets = [None] * dist.get_world_size()
    dist.all_gather_object(buckets, list(items))
    return [item for bucket in buckets for item in bucket]


class PredictionsCallback(L.Callback):
    """Writes `predictions.jsonl` as batches finish and `metrics.json` when the test epoch ends.

    W&B loggers also get `test/predictions`, a table of `table_size` predictions spread evenly over the file.
    """

    def __init__(self, predictions_path: str, resume: bool = True, table_size: int = 64, parser: str = "official"):
        self.path = Path(predictions_path)
        self.resume = resume
        self.parser = check_rule(parser)
        self.table_size = table_size
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
        records = read_predictions(self.path) if self.path.exists() else []
        self.metrics = score_records(records, self.parser)
        self.path.with_name("metrics.json").write_text(json.dumps(self.metrics, indent=2))
        for logger in trainer.loggers:
            logger.log_metrics({f"test/{k}": v for k, v in self.metrics.items()}, step=trainer.global_step)
        log_prediction_table(trainer.loggers, records, self.table_size)


TABLE_COLUMNS = ("benchmark", "id", "category", "question", "answer", "prediction")


def log_prediction_table(loggers, records: list[dict], size: int) -> None:
    """A W&B table of `size` records spread evenly over the predictions (every benchmark shows up)."""
    from lightning.pytorch.loggers import WandbLogger

    wandb_loggers = [logger for logger in loggers if isinstance(logger, WandbLogger)]
    if not wandb_loggers or not records or size <= 0:
        return
    import wandb

    step = max(len(records) // size, 1)
    rows = [[str(r.get(c, "")) for c in TABLE_COLUMNS] for r in records[::step][:size]]
    for logger in wandb_loggers:
        logger.experiment.log({"test/predictions": wandb.Table(columns=list(TABLE_COLUMNS), data=rows)})
