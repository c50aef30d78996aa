"""Sink statistics: accumulated over a validation epoch and sent to the loggers (W&B also gets histograms)."""

import csv
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from sinkflow.data.collate import Collator
from sinkflow.data.templates import VicunaV1
from sinkflow.sinks.stats import SinkStats, log_histograms
from sinkflow.sinks.strategies.none import NoneStrategy


def test_stats_on_hand_made_tensors():
    stats = SinkStats()
    norms = torch.tensor([[1.0, 2.0, 200.0, 3.0], [4.0, 150.0, 120.0, 5.0]])
    sinks = norms >= 100
    planted = torch.tensor([[False, False, True, False], [False, True, False, True]])
    stats.update(norms, sinks, planted)
    scalars, samples = stats.compute()
    assert scalars["sinks/per_image"] == 1.5 and scalars["sinks/images_with_sinks"] == 1.0
    assert scalars["sinks/precision"] == pytest.approx(2 / 3) and scalars["sinks/recall"] == pytest.approx(2 / 3)
    assert scalars["sinks/norm_max"] == 200.0 and scalars["sinks/norm_q50"] == 5.0  # sorted[4] of 8
    assert samples["counts"].tolist() == [1, 2]
    stats.reset()
    stats.update(norms[:1], torch.zeros(1, 4, dtype=torch.bool))
    scalars, _ = stats.compute()
    assert scalars["sinks/per_image"] == 0.0 and "sinks/precision" not in scalars  # nothing planted: no score


def test_an_image_seen_twice_counts_once():
    """The sampler's padding repeats a sample (on another rank, in another batch): its image counts once."""
    norms = torch.tensor([[1.0, 2.0, 200.0, 3.0], [4.0, 150.0, 120.0, 5.0]])
    once = SinkStats()
    once.update(norms, norms >= 100, keys=["a", "b"])
    twice = SinkStats()
    twice.update(norms, norms >= 100, keys=["a", "b"])
    twice.update(norms[1:], norms[1:] >= 100, keys=["b"])
    assert twice.compute()[0] == once.compute()[0]
    assert twice.compute()[0]["sinks/per_image"] == 1.5 and twice.compute()[1]["norms"].numel() == 8
    padded = torch.tensor([[7.0, 300.0, 0.0]])  # a third image with one padding position
    once.update(padded, padded >= 100, keys=["c"], valid=torch.tensor([[True, True, False]]))
    assert once.compute()[1]["norms"].tolist() == sorted([*norms.flatten().tolist(), 7.0, 300.0])


def test_every_validation_epoch_logs_sink_stats(shapes_root, tmp_path, simulated_llava):
    module = simulated_llava(NoneStrategy())
    processor = module.processor
    samples = [
        {
            "id": f"v{i}",
            "image": str(shapes_root / "eval_images" / f"eval_{i:05d}.png"),
            "conversations": [
                {"from": "human", "value": "<image>\nHow many shapes are there?"},
                {"from": "gpt", "value": "2"},
            ],
        }
        for i in range(6)
    ]
    loader = DataLoader(samples, batch_size=4, collate_fn=Collator(processor, VicunaV1()))
    logger = CSVLogger(tmp_path, name="csv")
    L.Trainer(logger=logger, enable_progress_bar=False, enable_checkpointing=False).validate(module, loader)
    rows = list(csv.DictReader(Path(logger.log_dir, "metrics.csv").read_text().splitlines()))
    logged = {k: float(v) for row in rows for k, v in row.items() if v}
    assert logged["val/sinks/per_image"] == 2.0 and logged["val/sinks/images_with_sinks"] == 1.0
    assert logged["val/sinks/precision"] == 1.0 and logged["val/sinks/recall"] == 1.0
    assert logged["val/sinks/norm_max"] == pytest.approx(150.0, rel=1e-5)
    assert module.stats["val"].update_count == 0, "the accumulator is reset for the next epoch"


def test_wandb_gets_histograms(tmp_path, hermetic_env):
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    logger = WandbLogger(save_dir=str(tmp_path), offline=True)
    sent = []
    logger.experiment.log = lambda data, **kwargs: sent.append(data)
    samples = {"counts": torch.tensor([0, 2, 2]), "norms": torch.tensor([1.0, 10.0, 100.0])}
    log_histograms([CSVLogger(tmp_path), logger], samples, step=7, stage="val")
    assert len(sent) == 1 and sent[0]["trainer/global_step"] == 7
    assert isinstance(sent[0]["val/sinks/per_image_hist"], wandb.Histogram)
    assert sent[0]["val/sinks/log10_norm_hist"].histogram is not None
    wandb.finish()
