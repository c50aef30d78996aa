"""Lightning callback: stream test predictions to the predictions file, score every answered question at the end.

Every rank adds its own records to a `BenchmarkScores` metric, which joins the ranks' records when it computes and
counts each (benchmark, id) once, so the sampler's padding duplicates never count twice and the scores equal a
single-process evaluation. The records are also gathered on rank 0, only to be written to the predictions file.

`metrics.json` holds everything the evaluation measured: the scores of every record in the predictions file
(including those answered before a resume) and what the module logged under `test/` (sink statistics; the cost
per question, `efficiency/*`), which cover the questions answered by this process, as does the throughput
(`throughput/questions_per_second`, over the test loop's wall-clock `throughput/seconds`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist

from sinkflow.benchmarks.base import BENCHMARKS, Benchmark, Parser
from sinkflow.checks import choice
from sinkflow.data.predictions import PredictionsWriter, read_predictions
from sinkflow.eval.benchmark_scores import BenchmarkScores

log = logging.getLogger(__name__)

# Metrics that measure this run (wall clock, memory, what its batches held) rather than score its answers: no two
# runs, nor a run and its 2-process twin, share them.
RUN_MEASURES = ("throughput/", "efficiency/")


def gather_objects(items: list) -> list:
    """Concatenate a list from every rank (identity without a process group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(items)
    buckets = [None] * dist.get_world_size()
    dist.all_gather_object(buckets, list(items))
    return [item for bucket in buckets for item in bucket]


class PredictionsCallback(L.Callback):
    """Writes `predictions.jsonl` as batches finish and `metrics.json` when the test ends (`metrics` holds it then;
    None until something was scored).

    W&B loggers also get `test/predictions`, a table of `table_size` predictions spread evenly over the file, each
    with its image and whether it is right (`log_prediction_table`).
    """

    def __init__(self, predictions_path: str, resume: bool = True, table_size: int = 64, parser: Parser = "official"):
        self.path = Path(predictions_path)
        self.resume = resume
        self.parser = choice("parser", parser, Parser)
        self.table_size = table_size
        self.writer: PredictionsWriter | None = None
        self.scores: BenchmarkScores | None = None
        self.answered_before = 0
        self.metrics: dict[str, float] | None = None
        self.started: float | None = None  # when this process's test loop began (perf_counter)
        self.answered = 0  # questions this process answered in it (a DistributedSampler's repeats included)

    def start_scores(self, device: torch.device, earlier: list[dict]) -> None:
        """A fresh metric on the module's device (collectives need tensors there), holding the questions answered
        before (rank 0 passes the predictions file's records; the other ranks nothing)."""
        self.scores = BenchmarkScores(self.parser).to(device)
        self.scores.update(earlier)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started, self.answered = time.perf_counter(), 0
        earlier = []
        if trainer.is_global_zero:
            self.writer = PredictionsWriter(self.path, resume=self.resume)
            earlier = self.writer.earlier
            self.answered_before = len(earlier)
        self.start_scores(pl_module.device, earlier)

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: list[dict],
        batch: dict,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self.answered += len(outputs)
        self.scores.update(outputs)
        records = gather_objects(outputs)
        if trainer.is_global_zero:
            self.writer.append(records)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self.writer.close()

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The module's epoch-end logs (sink statistics) have reached callback_metrics by now.
        measured = {
            key.removeprefix("test/"): float(value)
            for key, value in trainer.callback_metrics.items()
            if key.startswith("test/")
        }
        if measured and self.answered_before:
            log.warning(
                "resumed: %s cover the questions answered now, not the %d already in %s",
                ", ".join(sorted({k.split("/")[0] + "/*" for k in measured})),
                self.answered_before,
                self.path,
            )
        self.report(trainer, measured | self.throughput(trainer))

    def throughput(self, trainer: L.Trainer) -> dict[str, float]:
        """Questions per second of this process's test loop (loading, generation and writing included), logged and
        sent to the loggers."""
        seconds = time.perf_counter() - self.started
        rate = self.answered / seconds
        log.info("answered %d questions in %.1f s: %.3f questions/s", self.answered, seconds, rate)
        measured = {"throughput/questions_per_second": rate, "throughput/seconds": seconds}
        for logger in trainer.loggers:
            logger.log_metrics({f"test/{k}": v for k, v in measured.items()}, step=trainer.global_step)
        return measured

    def rescore(self, trainer: L.Trainer) -> None:
        """Score a predictions file whose every question was answered before; measurements that need the model
        (sink statistics) are kept from the earlier metrics.json, with a warning."""
        self.start_scores(trainer.strategy.root_device, read_predictions(self.path) if trainer.is_global_zero else [])
        self.report(trainer, {}, keep_previous=True)

    def report(self, trainer: L.Trainer, measured: dict[str, float], keep_previous: bool = False) -> None:
        """Score every answered question (on every rank: the metric joins the ranks' records), then on rank 0 write
        metrics.json (scores + `measured`) and log the scores."""
        scores = self.scores.compute()
        self.metrics = {}
        if not trainer.is_global_zero:
            return
        metrics_path = self.path.with_name("metrics.json")
        if keep_previous and metrics_path.is_file():
            measured = {k: v for k, v in json.loads(metrics_path.read_text()).items() if k not in scores}
            if measured:
                log.warning(
                    "kept %s from %s: measured when its questions were answered",
                    ", ".join(sorted({k.split("/")[0] + "/*" for k in measured})),
                    metrics_path,
                )
        self.metrics = dict(sorted({**measured, **scores}.items()))
        metrics_path.write_text(json.dumps(self.metrics, indent=2))
        for logger in trainer.loggers:
            logger.log_metrics({f"test/{k}": v for k, v in scores.items()}, step=trainer.global_step)
        log_prediction_table(trainer.loggers, read_predictions(self.path), self.table_size, self.parser)


TABLE_COLUMNS = (
    "benchmark",
    "id",
    "category",
    "image",
    "question",
    "answer",
    "prediction",
    "correct",
    "route",
    "routing",
)


def log_prediction_table(loggers: list, records: list[dict], size: int, parser: Parser) -> None:
    """A W&B table of `size` records spread evenly over the predictions (every benchmark shows up): the image the
    model was shown (the first of several), the question, answer and prediction, whether the prediction is right
    under `parser` (the benchmark's own rule, `Benchmark.correct`) and, for a deciding strategy, the route(s) taken
    and the whole decision (JSON)."""
    from lightning.pytorch.loggers import WandbLogger

    wandb_loggers = [logger for logger in loggers if isinstance(logger, WandbLogger)]
    if not wandb_loggers or not records or size <= 0:
        return
    import wandb

    step = max(len(records) // size, 1)
    rows = [table_row(record, parser, wandb.Image) for record in records[::step][:size]]
    for logger in wandb_loggers:
        logger.experiment.log({"test/predictions": wandb.Table(columns=list(TABLE_COLUMNS), data=rows)})


def table_row(record: dict, parser: Parser, image: Callable[[str], object]) -> list:
    """One record as a row of `TABLE_COLUMNS`; `image(path)` makes the image cell (None when the record names no
    image file: asked without images, or written before records carried `image_path`)."""
    paths = record.get("image_path")
    first = paths[0] if isinstance(paths, list) and paths else paths
    decisions = record.get("routing")
    routes = [d["route"] for d in (decisions if isinstance(decisions, list) else [decisions])] if decisions else []
    benchmark = BENCHMARKS.get(record["benchmark"]) or Benchmark  # an unknown one: scored by first word
    return [
        str(record["benchmark"]),
        str(record["id"]),
        str(record.get("category", "")),
        image(first) if first else None,
        str(record["question"]),
        str(record["answer"]),
        str(record["prediction"]),
        benchmark.correct(record, parser),
        ",".join(routes),
        json.dumps(decisions) if decisions else "",
    ]
