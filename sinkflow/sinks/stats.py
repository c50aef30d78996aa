"""Sink statistics of a run, accumulated over an epoch (DDP-synced) and sent to every logger.

Per image: the sink count; per token: the L2 norm (each image once, also under DDP). When the model plants simulated
sinks, detector precision and recall against them. W&B also gets histograms of sinks per image and of log10 token
norms.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from sinkflow.data.collate import key_hash

QUANTILES = (0.5, 0.9, 0.99)


class SinkStats(Metric):
    """Sinks per image, token-norm quantiles and (with planted ground truth) detector precision / recall.

    Each image counts once, by its key: the duplicates a `DistributedSampler` pads in (the same sample on two
    ranks) are dropped when the synchronised states are computed, so DDP gives the single-process statistics.
    """

    full_state_update = False

    def __init__(self):
        super().__init__()
        # Per image: key hash, instance, sink count, true / false positives, false negatives, scored (planted known).
        self.add_state("images", default=[], dist_reduce_fx="cat")
        # Per valid token: its norm and its image's instance.
        self.add_state("norms", default=[], dist_reduce_fx="cat")
        self.add_state("token_images", default=[], dist_reduce_fx="cat")
        self.instances = 0  # images seen by this process: with the rank, a unique id per image instance

    def update(
        self,
        norms: torch.Tensor,
        sinks: torch.Tensor,
        planted: torch.Tensor | None = None,
        keys: list[str] | None = None,
        valid: torch.Tensor | None = None,
    ) -> None:
        """`norms` [n_images, N] float (real tokens where `valid`, default all), `sinks` / `planted` [n_images, M]
        bool, `keys` one id per image (default: every image distinct)."""
        n_images = len(sinks)
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        instance = (rank << 40) + self.instances + torch.arange(n_images, device=sinks.device)
        self.instances += n_images
        key = torch.tensor([key_hash(k) for k in keys], device=sinks.device) if keys is not None else instance
        counts = sinks.sum(dim=1)
        if planted is not None:
            hits = torch.stack(
                [
                    (sinks & planted).sum(1),
                    (sinks & ~planted).sum(1),
                    (~sinks & planted).sum(1),
                    torch.ones_like(counts),
                ],
                dim=1,
            )
        else:
            hits = torch.zeros(n_images, 4, dtype=torch.long, device=sinks.device)
        self.images.append(torch.cat([torch.stack([key, instance, counts], dim=1), hits], dim=1).long())
        valid = torch.ones_like(norms, dtype=torch.bool) if valid is None else valid
        self.norms.append(norms[valid].float())
        self.token_images.append(instance[:, None].expand_as(norms)[valid])

    def add_nothing(self) -> None:
        """Well-typed empty states, so a process that saw no image can take part in the synchronised compute."""
        self.update(torch.zeros(0, 0, device=self.device), torch.zeros(0, 0, dtype=torch.bool, device=self.device))

    def reset(self) -> None:
        super().reset()
        self.instances = 0

    def compute(self) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        """(scalars, raw samples): the raw per-image counts and per-token norms feed histograms."""
        images = dim_zero_cat(self.images)
        _, inverse = torch.unique(images[:, 0], return_inverse=True)
        first = torch.full((int(inverse.max()) + 1 if len(inverse) else 0,), len(images), device=images.device)
        first = first.scatter_reduce(0, inverse, torch.arange(len(images), device=images.device), reduce="amin")
        images = images[first]
        norms = dim_zero_cat(self.norms)[torch.isin(dim_zero_cat(self.token_images), images[:, 1])].sort().values
        counts = images[:, 2].float()
        out = {"sinks/per_image": counts.mean().item(), "sinks/images_with_sinks": (counts > 0).float().mean().item()}
        # Indexing the sorted norms (torch.quantile refuses more than 16M values; a real eval set has more).
        for q in QUANTILES:
            out[f"sinks/norm_q{round(q * 100)}"] = norms[min(int(q * len(norms)), len(norms) - 1)].item()
        out["sinks/norm_max"] = norms[-1].item()
        tp, fp, fn, scored = images[:, 3:].sum(dim=0).tolist()
        if scored > 0:
            out["sinks/precision"] = tp / (tp + fp) if tp + fp else 0.0
            out["sinks/recall"] = tp / (tp + fn) if tp + fn else 1.0
        return out, {"counts": counts, "norms": norms}


def log_histograms(loggers, samples: dict[str, torch.Tensor], step: int, stage: str) -> None:
    """Sinks-per-image and log10-norm histograms for the W&B loggers among `loggers` (others get the scalars)."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in loggers:
        if isinstance(logger, WandbLogger):
            import wandb

            logger.experiment.log(
                {
                    f"{stage}/sinks/per_image_hist": wandb.Histogram(samples["counts"].cpu().numpy()),
                    f"{stage}/sinks/log10_norm_hist": wandb.Histogram(
                        samples["norms"].clamp_min(1e-6).log10().cpu().numpy()
                    ),
                    "trainer/global_step": step,
                }
            )
