"""RNG states saved in a checkpoint and restored when training starts; `last.ckpt` written after the validation that
follows its step."""

import logging
import random
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

from sinkflow.resume import LastCheckpoint, RandomState


def draws() -> tuple:
    return torch.rand(4).tolist(), np.random.randn(3).tolist(), [random.random() for _ in range(4)]


def test_rng_states_read_back_with_weights_only_are_restored_when_training_starts(tmp_path):
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    np.random.randn()  # numpy keeps the second gaussian of a pair for the next draw: that is state too
    torch.save(RandomState().state_dict(), tmp_path / "state.pt")
    expected = draws()
    resumed = RandomState()
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    single = SimpleNamespace(world_size=1, global_rank=0)
    resumed.on_train_start(single, None)
    assert draws() == expected
    resumed.on_train_start(single, None)  # once: a later fit starts from where it is
    assert draws() != expected


def test_rng_states_of_another_number_of_processes_are_left_with_a_warning(caplog):
    saved = RandomState().state_dict()
    expected = draws()
    resumed = RandomState()
    resumed.load_state_dict(saved)
    with caplog.at_level(logging.WARNING, logger="sinkflow.resume"):
        resumed.on_train_start(SimpleNamespace(world_size=2, global_rank=1), None)
    assert "holds the RNG states of 1 processes and this run has 2: they are not restored" in caplog.text
    assert draws() != expected


class Events(L.Callback):
    def __init__(self):
        self.events = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.events.append(("batch", trainer.global_step))

    def on_validation_end(self, trainer, pl_module):
        self.events.append(("validation", trainer.global_step))

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        self.events.append(("save", trainer.global_step))


def test_last_checkpoint_is_written_every_n_steps_and_after_the_validation_that_follows_a_step(tmp_path):
    recorder = Events()
    last = LastCheckpoint(str(tmp_path), every_n_train_steps=1)
    trainer = L.Trainer(
        max_steps=6,
        limit_train_batches=4,
        val_check_interval=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        callbacks=[recorder, last],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(BoringModel())
    expected = []
    for step in range(1, 7):
        expected += [("batch", step)] + ([("validation", step)] if step % 2 == 0 else []) + [("save", step)]
    assert recorder.events == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


@pytest.mark.parametrize("steps", [0, 2.5, None])
def test_last_checkpoint_needs_a_positive_whole_number_of_steps(tmp_path, steps):
    with pytest.raises(ValueError, match=r"`callbacks.last_checkpoint.every_n_train_steps` must be an integer >= 1"):
        LastCheckpoint(str(tmp_path), every_n_train_steps=steps)
