"""A callback that draws the run's training and validation loss to `loss_curves.png` (whatever the logger)."""

from __future__ import annotations

from pathlib import Path

import lightning as L

from sinkflow.plotting import pyplot


class LossCurves(L.Callback):
    """Collects `train/loss` per step and `val/loss` per validation, and plots both when fit ends (rank 0)."""

    def __init__(self, path: str):
        self.path = Path(path)
        self.train: list[tuple[int, float]] = []
        self.val: list[tuple[int, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if outputs is not None and "loss" in outputs:
            self.train.append((trainer.global_step, float(outputs["loss"])))

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking and "val/loss" in trainer.callback_metrics:
            self.val.append((trainer.global_step, float(trainer.callback_metrics["val/loss"])))

    def on_train_end(self, trainer, pl_module):
        if trainer.is_global_zero and self.train:
            plot_losses(self.train, self.val, self.path)


def plot_losses(train: list[tuple[int, float]], val: list[tuple[int, float]], path: Path) -> None:
    """Train loss (raw and smoothed) and validation loss against the optimizer step, log-scale y."""
    plt = pyplot()
    steps, losses = zip(*train)
    window = max(1, len(losses) // 50)
    smooth = [
        sum(losses[max(0, i - window + 1) : i + 1]) / len(losses[max(0, i - window + 1) : i + 1])
        for i in range(len(losses))
    ]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, losses, color="tab:blue", alpha=0.25, linewidth=0.8, label="train (per step)")
    ax.plot(steps, smooth, color="tab:blue", label=f"train (mean of {window})")
    if val:
        ax.plot(*zip(*val), "o-", color="tab:orange", label="validation")
    ax.set(xlabel="optimizer step", ylabel="loss (supervised tokens)", yscale="log", title=path.parent.name)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
