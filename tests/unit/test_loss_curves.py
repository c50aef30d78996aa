"""The loss-curve callback records what the loops report and draws a PNG."""

from types import SimpleNamespace

import torch

from sinkflow.loss_curves import LossCurves


def test_records_train_and_val_losses_and_writes_png(tmp_path):
    curves = LossCurves(str(tmp_path / "run" / "loss_curves.png"))
    trainer = SimpleNamespace(global_step=0, sanity_checking=False, is_global_zero=True, callback_metrics={})
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
