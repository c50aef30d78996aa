"""The loss-curve callback records what the loops report and draws a PNG beside the JSON of what it draws, titled
with the run's model, strategy and data."""

import json
from types import SimpleNamespace

import torch

from sinkflow.loss_curves import LossCurves
from sinkflow.sinks.detectors.topk import TopK


def test_records_train_and_val_losses_and_writes_png_and_json(tmp_path):
    curves = LossCurves(str(tmp_path / "run" / "loss_curves.png"))
    trainer = SimpleNamespace(
        global_step=0, sanity_checking=False, is_global_zero=True, callback_metrics={}, loggers=[]
    )
    trainer.datamodule = SimpleNamespace(train_json=str(tmp_path / "shapes-seed0-n32" / "train.json"), eval_sets={})
    module = SimpleNamespace(
        source="llava-hf/llava-1.5-7b-hf", strategy=SimpleNamespace(name="dual_mlp"), detector=TopK(k=4)
    )
    curves.on_fit_start(trainer, SimpleNamespace(**vars(module), simulated_sinks=None))
    for step in range(1, 6):
        trainer.global_step = step
        curves.on_train_batch_end(trainer, None, {"loss": torch.tensor(1.0 / step)}, None, step)
    trainer.callback_metrics = {"val/loss": torch.tensor(0.5)}
    curves.on_validation_epoch_end(trainer, None)
    trainer.sanity_checking = True
    curves.on_validation_epoch_end(trainer, None)  # sanity checks are not part of the curve
    assert curves.train == [(s, float(torch.tensor(1.0 / s))) for s in range(1, 6)]
    assert curves.val == [(5, 0.5)]
    curves.on_train_end(trainer, None)
    assert (tmp_path / "run" / "loss_curves.png").read_bytes()[:4] == b"\x89PNG"
    written = json.loads((tmp_path / "run" / "loss_curves.json").read_text())
    assert written["caption"] == (
        "llava-hf/llava-1.5-7b-hf · strategy dual_mlp · sinks: topk k=4\ndata shapes-seed0-n32 · 5 training steps"
    )
    assert written["train"] == {"step": [1, 2, 3, 4, 5], "loss": [loss for _, loss in curves.train]}
    assert written["val"] == {"step": [5], "loss": [0.5]}
