"""A callback that draws the run's training and validation loss to `loss_curves.png`, beside `loss_curves.json`
(what the figure draws), whatever the logger; W&B gets the image too."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import lightning as L

from sinkflow.caption import Caption
from sinkflow.loggers import log_images
from sinkflow.plotting import pyplot, titled

if TYPE_CHECKING:
    from matplotlib.figure import Figure


class LossCurves(L.Callback):
    """Collects `train/loss` per step and `val/loss` per validation, and plots both when fit ends (rank 0), titled
    with the run's model, strategy and data."""

    def __init__(self, path: str):
        self.path = Path(path)
        self.train: list[tuple[int, float]] = []
        self.val: list[tuple[int, float]] = []
        self.caption: Caption | None = None

    def on_fit_start(self, trainer, pl_module):
        self.caption = Caption.of(pl_module, trainer.datamodule)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if outputs is not None and "loss" in outputs:
            self.train.append((trainer.global_step, float(outputs["loss"])))

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking and "val/loss" in trainer.callback_metrics:
            self.val.append((trainer.global_step, float(trainer.callback_metrics["val/loss"])))

    def on_train_end(self, trainer, pl_module):
        if trainer.is_global_zero and self.train:
            curves = loss_curves(self.train, self.val, self.caption.text(f"{len(self.train)} training steps"))
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.with_suffix(".json").write_text(json.dumps(curves, indent=2))
            figure = plot_losses(curves)
            figure.savefig(self.path, dpi=120)
            pyplot().close(figure)
            log_images(trainer.loggers, {"train/loss_curves": self.path}, step=trainer.global_step)


def loss_curves(train: list[tuple[int, float]], val: list[tuple[int, float]], caption: str) -> dict:
    """What the figure draws: the train loss per step, its running mean over `window` steps (1/50 of the run) and
    the validation loss, against the optimizer step."""
    steps, losses = zip(*train)
    window = max(1, len(losses) // 50)
    mean = [sum(losses[max(0, i - window + 1) : i + 1]) / min(window, i + 1) for i in range(len(losses))]
    return {
        "caption": caption,
        "train": {"step": list(steps), "loss": list(losses)},
        "train_mean": {"window": window, "loss": mean},
        "val": {"step": [s for s, _ in val], "loss": [v for _, v in val]},
    }


def plot_losses(curves: dict) -> Figure:
    """Train loss (raw and its running mean) and validation loss against the optimizer step, log-scale y; drawn from
    `loss_curves(...)` alone."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    steps = curves["train"]["step"]
    ax.plot(steps, curves["train"]["loss"], color="tab:blue", alpha=0.25, linewidth=0.8, label="train (per step)")
    window = curves["train_mean"]["window"]
    ax.plot(steps, curves["train_mean"]["loss"], color="tab:blue", label=f"train (mean of {window} steps)")
    if curves["val"]["step"]:
        ax.plot(curves["val"]["step"], curves["val"]["loss"], "o-", color="tab:orange", label="validation")
    ax.set(xlabel="optimizer step", ylabel="loss (cross-entropy, nats per token)", yscale="log")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return titled(fig, "training and validation loss", curves["caption"])
