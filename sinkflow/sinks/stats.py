"""Sink statistics of a run, accumulated over an epoch (DDP-synced) and sent to every logger.

Per image: the sink count; per token: the L2 norm. When the model plants simulated sinks, detector precision and
recall against them. W&B also gets histograms of sinks per image and of log10 token norms.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

QUANTILES = (0.5, 0.9, 0.99)


class SinkStats(Metric):
    """Sinks per image, token-norm quantiles and (with planted ground truth) detector precision / recall."""

    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state("counts", default=[], dist_reduce_fx="cat")
        self.add_state("norms", default=[], dist_reduce_fx="cat")
        for name in ("true_pos", "false_pos", "false_neg"):
            self.add_state(name, default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("scored", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, norms: torch.Tensor, sinks: torch.Tensor, planted: torch.Tensor | None = None) -> None:
        """`norms` [n_images, N] float, `sinks` / `planted` [n_images, N] bool."""
        self.counts.append(sinks.sum(dim=1))
        self.norms.append(norms.flatten().float())
        if planted is not None:
            self.true_pos += (sinks & planted).sum()
            self.false_pos += (sinks & ~planted).sum()
            self.false_neg += (~sinks & planted).sum()
            self.scored += len(sinks)

    def add_nothing(self) -> None:
        """Well-typed empty states, so a process that saw no image can take part in the synchronised compute."""
        self.update(torch.zeros(0, 0, device=self.device), torch.zeros(0, 0, dtype=torch.bool, device=self.device))

    def compute(self) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        """(scalars, raw samples): the raw per-image counts and per-token norms feed histograms."""
        counts = dim_zero_cat(self.counts).float()
        norms = dim_zero_cat(self.norms).sort().values
        out = {"sinks/per_image": counts.mean().item(), "sinks/images_with_sinks": (counts > 0).float().mean().item()}
        # Indexing the sorted norms (torch.quantile refuses more than 16M values; a real eval set has more).
        for q in QUANTILES:
            out[f"sinks/norm_q{round(q * 100)}"] = norms[min(int(q * len(norms)), len(norms) - 1)].item()
        out["sinks/norm_max"] = norms[-1].item()
        if self.scored > 0:
            tp, fp, fn = self.true_pos.item(), self.false_pos.item(), self.false_neg.item()
            out["sinks/precision"] = tp / (tp + fp) if tp + fp else 0.0
            out["sinks/recall"] = tp / (tp + fn) if tp + fn else 1.0
        return out, {"counts": counts, "norms": norms}


def log_histograms(loggers, samples: dict[str, torch.Tensor], step: int, stage: str) -> None:
    """Sinks-per-image and log10-norm histograms for the W&B loggers among `loggers` (others get the scalars)."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in loggers:
        if isinstance(logger, WandbLogger):
            import wandb

            logger.experiment.log({
                f"{stage}/sinks/per_image_hist": wandb.Histogram(samples["counts"].cpu().numpy()),
                f"{stage}/sinks/log10_norm_hist":
                    wandb.Histogram(samples["norms"].clamp_min(1e-6).log10().cpu().numpy()),
                "trainer/global_step": step,
            })
