"""Benchmark scores during training: generate on part of every evaluation set when validation ends.

The validation loss says little about POPE F1 or MME score; this callback answers the first `limit` questions of
each evaluation set (the same ones every time) after every `every_n_epochs`-th validation and logs the official
metrics as `val/<key>` (so `ModelCheckpoint(monitor="val/pope/f1_mean")` works). Under DDP each rank answers a
strided share of the questions and the `BenchmarkScores` metric joins the shares, so all ranks log the same values.
"""

from __future__ import annotations

from collections import defaultdict

import lightning as L

from sinkflow.benchmarks.base import Parser
from sinkflow.checks import choice
from sinkflow.eval.benchmark_scores import BenchmarkScores


class BenchmarkValidation(L.Callback):
    """Official benchmark metrics on a fixed subset of the evaluation sets at validation end."""

    def __init__(
        self,
        every_n_epochs: int = 1,
        limit: int | None = 32,
        batch_size: int | None = None,
        parser: Parser = "official",
    ):
        self.parser = choice("parser", parser, Parser)
        if every_n_epochs < 1:
            raise ValueError(f"callbacks.benchmark_validation.every_n_epochs must be >= 1, got {every_n_epochs}")
        self.every_n_epochs, self.limit, self.batch_size = every_n_epochs, limit, batch_size

    def questions(self, datamodule: L.LightningDataModule) -> list[dict]:
        """The first `limit` questions of every benchmark, in dataset order."""
        if not datamodule.test_set:
            datamodule.setup("test")
        taken: dict[str, int] = defaultdict(int)
        chosen = []
        for sample in datamodule.test_set:
            benchmark = sample["meta"]["benchmark"]
            if self.limit is None or taken[benchmark] < self.limit:
                taken[benchmark] += 1
                chosen.append(sample)
        return chosen

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        datamodule = trainer.datamodule
        share = self.questions(datamodule)[trainer.global_rank :: trainer.world_size]
        collate = datamodule.generation_collator()
        size = self.batch_size or datamodule.eval_batch_size
        scores = BenchmarkScores(self.parser).to(pl_module.device)
        for start in range(0, len(share), size):
            batch = trainer.strategy.batch_to_device(collate(share[start : start + size]))
            scores.update(
                [dict(meta, prediction=text.strip()) for meta, text in zip(batch["meta"], pl_module.generate(batch))]
            )
        metrics = scores.compute()
        pl_module.log_dict({f"val/{k}": v for k, v in metrics.items()}, sync_dist=False)
