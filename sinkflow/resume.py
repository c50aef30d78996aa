"""Exact resume: a run killed and resumed from its `last.ckpt` ends with the weights of a run never interrupted.

Lightning's checkpoints hold the trainable weights, the optimizer, the LR scheduler, the loops' progress and the
training loader's position (`sinkflow.data.resumable`). `RandomState` adds the random number generators, and
`LastCheckpoint` writes `last.ckpt` every few steps, so that little is lost.
"""

from __future__ import annotations

import logging
import random

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import ModelCheckpoint

from sinkflow.checks import number

log = logging.getLogger(__name__)


def capture_rng() -> dict:
    """The torch, CUDA, numpy and python RNG states as tensors and plain numbers (`torch.load(weights_only=True)`
    reads them back)."""
    _, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
    }
    if torch.cuda.is_initialized():  # a run that never touched CUDA has no CUDA state worth a context
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    """Set the generators to a `capture_rng()` state (the CUDA devices that this process sees, when it has CUDA)."""
    torch.set_rng_state(state["torch"])
    saved = state["numpy"]
    np.random.set_state(
        ("MT19937", saved["keys"].numpy().astype(np.uint32), saved["pos"], saved["has_gauss"], saved["cached_gaussian"])
    )
    saved = state["python"]
    random.setstate((saved["version"], tuple(saved["internal"].tolist()), saved["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        for device, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, device)


class RandomState(L.Callback):
    """Saves every process's RNG states in each checkpoint; on resume, restores them just before training starts.

    Restoring at `on_train_start` comes after everything that draws from the generators while a run starts
    (model construction, LoRA initialisation, optimizer and loaders), so the first resumed batch sees the states
    that the uninterrupted run's batch saw.
    """

    def __init__(self):
        self._saved: list[dict] | None = None

    def state_dict(self) -> dict:
        state = capture_rng()
        if not (dist.is_available() and dist.is_initialized()):
            return {"processes": [state]}
        # Each rank draws its own dropout masks, and only rank 0 writes the checkpoint: it keeps them all.
        states = [None] * dist.get_world_size()
        dist.all_gather_object(states, state)
        return {"processes": states}

    def load_state_dict(self, state_dict: dict) -> None:
        self._saved = state_dict["processes"]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        saved, self._saved = self._saved, None
        if saved is None:
            return
        if len(saved) != trainer.world_size:
            log.warning(
                "the checkpoint holds the RNG states of %d processes and this run has %d: they are not "
                "restored, and random draws (dropout) will differ from the uninterrupted run",
                len(saved),
                trainer.world_size,
            )
            return
        restore_rng(saved[trainer.global_rank])


class LastCheckpoint(ModelCheckpoint):
    """Writes `last.ckpt` (and nothing else) every `every_n_train_steps` optimizer steps.

    A step that a validation follows is written when that validation ends: resuming from a checkpoint taken
    before a due validation, Lightning would count that validation as done and skip it.
    """

    def __init__(self, dirpath: str, every_n_train_steps: int):
        self.every_n_train_steps = number(
            "callbacks.last_checkpoint.every_n_train_steps", every_n_train_steps, integer=True, at_least=1
        )
        super().__init__(dirpath=dirpath, save_last=True, save_top_k=0, every_n_train_steps=every_n_train_steps)
        self._after_validation = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loop = trainer.fit_loop  # its own test of whether a validation follows this batch
        if trainer.global_step % self.every_n_train_steps == 0 and loop.epoch_loop._should_check_val_fx(
            loop._data_fetcher
        ):
            self._after_validation = not self._should_skip_saving_checkpoint(trainer)
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._after_validation:
            self._after_validation = False
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
