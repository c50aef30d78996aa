"""The training loader that resumes exactly: each epoch's order depends only on (seed, epoch), and a run resumed
from a mid-epoch checkpoint continues with the batch that comes next.

A plain shuffling `DataLoader` draws its permutation seed and its workers' base seed from the global torch RNG each
time an iterator is created, so a resumed run would see another order and shift every later random draw (dropout).
The position (`state_dict()`) travels in every checkpoint with the data module's state, which gives it back through
`load_state_dict()` when a run resumes.
"""

from __future__ import annotations

from itertools import islice

import torch
from torch.utils.data import DataLoader, DistributedSampler


class EpochShuffle(DistributedSampler):
    """This process's share of the permutation seeded by `seed + epoch`, from its `start`-th index on.

    A `DistributedSampler`, so that under DDP Lightning keeps it instead of injecting its own (which would
    draw the whole epoch from it and reshuffle): the shares are those Lightning's sampler would give.
    """

    def __init__(self, dataset, seed: int, num_replicas: int = 1, rank: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.start = 0

    def __iter__(self):
        return islice(super().__iter__(), self.start, None)


class ResumableLoader(DataLoader):
    """A shuffling loader whose position (epoch, batches handed out) is saved in checkpoints and restored on resume.

    Lightning fetches the batches of a loader with a length one at a time, so the batches handed out are the batches
    trained on when a checkpoint is written. `num_replicas` / `rank`: this process's share under DDP.
    """

    def __init__(self, dataset, *, batch_size: int, seed: int, num_replicas: int = 1, rank: int = 0, **kwargs):
        super().__init__(
            dataset, batch_size=batch_size, sampler=EpochShuffle(dataset, seed, num_replicas, rank), **kwargs
        )
        self.seed = seed
        self.epoch = 0
        self.batches = 0
        self._resume: dict[str, int] | None = None

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches": self.batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = dict(state)

    def __iter__(self):
        return self._batches()

    def _batches(self):
        # A generator: the epoch is read at the first batch, once Lightning has called `set_epoch` for the epoch it
        # resumes (a checkpoint taken after an epoch's last batch resumes with the next epoch, from its start).
        epoch = self.sampler.epoch
        resume, self._resume = self._resume, None
        self.batches = resume["batches"] if resume is not None and resume["epoch"] == epoch else 0
        self.epoch = epoch
        self.sampler.start = self.batches * self.batch_size
        self.generator = torch.Generator().manual_seed(self.seed + epoch)  # the workers' base seed
        for batch in super().__iter__():
            self.batches += 1
            yield batch
