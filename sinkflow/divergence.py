"""A diverging run stops at once, says where, and never writes a non-finite weight.

`DivergenceGuard` judges every optimizer step before it is taken: a non-finite training loss (any micro-batch of
the step) or a non-finite gradient stops training with `TrainingDiverged`, naming the step, the loss and the
parameter groups whose gradients broke, and the last checkpoint on disk (every checkpoint written is finite, see
`require_finite`). With `max_bad_steps > 0` it drops the update of up to that many bad steps instead, as
large-scale trainers do (the learning-rate schedule still advances), and stops at the next one.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import lightning as L
import torch
from torch.distributed.tensor import DTensor
from torch.nn.utils import get_total_norm

from sinkflow.checks import number

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """Training met a non-finite loss or gradient and stopped."""


class NonFiniteWeights(ValueError):
    """Weights about to be written hold NaN or infinity."""


def require_finite(tensors: dict[str, torch.Tensor], what: str) -> None:
    """Refuse to write `what` when any of `tensors` holds NaN or infinity."""
    bad = [name for name, tensor in tensors.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise NonFiniteWeights(f"refusing to write {what}: non-finite values in {', '.join(bad[:5])}{more}")


class DivergenceGuard(L.Callback):
    """Stops training (or, within `max_bad_steps`, skips the step) on a non-finite loss or gradient."""

    def __init__(self, max_bad_steps: int = 0):
        self.max_bad_steps = number("divergence.max_bad_steps", max_bad_steps, integer=True, at_least=0)
        self.skipped = 0
        self.losses: list[torch.Tensor] = []  # this rank's losses since the last optimizer step (micro-batches)

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        self.losses.append(loss.detach().float().mean())

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        losses, self.losses = self.losses, []
        # A gradient scaler (fp16) skips its own overflowing steps: only the loss is judged then.
        scaled = getattr(trainer.precision_plugin, "scaler", None) is not None
        named = [] if scaled else named_grads(optimizer)
        # One read from the device per step: the losses, then each group's largest |gradient| (NaN stays NaN).
        values = torch.stack([*losses, *(get_total_norm(grads, norm_type=math.inf) for _, grads in named)]).tolist()
        losses, norms = values[: len(losses)], values[len(losses) :]
        bad_loss = not all(math.isfinite(x) for x in losses)
        groups = [name for (name, _), norm in zip(named, norms) if not math.isfinite(norm)]
        # Every rank takes the same decision (a loss is per rank; DDP gradients are already reduced).
        if not trainer.strategy.reduce_boolean_decision(bad_loss or bool(groups), all=False):
            return
        what = f"train/loss = {', '.join(f'{x:.4g}' for x in losses)}" + (
            f"; non-finite gradients in parameter group(s) {', '.join(groups)}" if groups else ""
        )
        step = trainer.global_step
        if self.skipped < self.max_bad_steps:
            self.skipped += 1
            for group in optimizer.param_groups:
                for parameter in group["params"]:
                    parameter.grad = None
            log.warning(
                "step %d: %s; update skipped (%d of divergence.max_bad_steps=%d)",
                step,
                what,
                self.skipped,
                self.max_bad_steps,
            )
            return
        budget = f" after skipping {self.skipped} bad step(s)" if self.max_bad_steps else ""
        raise TrainingDiverged(
            f"training diverged at step {step} (epoch {trainer.current_epoch}){budget}: {what}. Stopped before "
            f"this update; {last_checkpoint(trainer)}. Lower model.optim.lr (or the projector / strategy rates), "
            "or let training skip a few bad steps with divergence.max_bad_steps=N."
        )


def named_grads(optimizer: torch.optim.Optimizer) -> list[tuple[str, list[torch.Tensor]]]:
    """(name, gradients) of each parameter group that has gradients; a sharded gradient (FSDP) by this rank's shard
    (the ranks then decide together)."""
    named = [
        (
            group.get("name", f"#{i}"),
            [
                p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad
                for p in group["params"]
                if p.grad is not None
            ],
        )
        for i, group in enumerate(optimizer.param_groups)
    ]
    return [(name, grads) for name, grads in named if grads]


def _local(grad: torch.Tensor) -> torch.Tensor:
    return grad.to_local() if isinstance(grad, DTensor) else grad


def last_checkpoint(trainer) -> str:
    """Where the newest checkpoint on disk is (all of them are finite), for the stop message."""
    paths = [Path(p) for c in trainer.checkpoint_callbacks for p in (c.last_model_path, c.best_model_path) if p]
    existing = [p for p in paths if p.is_file()]
    if not existing:
        return "no checkpoint had been written yet"
    newest = max(existing, key=lambda p: p.stat().st_mtime)
    return f"the last checkpoint, with finite weights, is {newest}"
