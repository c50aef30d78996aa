"""The training loader: each epoch's order depends only on (seed, epoch), the global RNG is never drawn from, and a
saved position resumes with the next batch (also with workers, under DDP and through the data module's state)."""

import torch
from torch.utils.data import DistributedSampler

from sinkflow.data.datamodule import LVLMDataModule
from sinkflow.data.resumable import ResumableLoader
from sinkflow.data.templates import VicunaV1
from sinkflow.models.tiny import TinyLlavaSpec, build_tiny_llava

DATA = list(range(10))


def loader(**kwargs) -> ResumableLoader:
    return ResumableLoader(DATA, batch_size=3, seed=7, **kwargs)


def epoch(data_loader, number: int) -> list[list[int]]:
    data_loader.sampler.set_epoch(number)
    return [batch.tolist() for batch in data_loader]


def expected(number: int) -> list[list[int]]:
    order = torch.randperm(10, generator=torch.Generator().manual_seed(7 + number)).tolist()
    return [order[i : i + 3] for i in range(0, 10, 3)]


def test_each_epoch_order_depends_only_on_seed_and_epoch():
    torch.manual_seed(1)
    first = [epoch(loader(), n) for n in range(3)]
    torch.manual_seed(2)
    assert [epoch(loader(), n) for n in range(3)] == first == [expected(n) for n in range(3)]
    assert first[0] != first[1]


def test_iterating_draws_nothing_from_the_global_rng():
    before = torch.get_rng_state()
    epoch(loader(), 0)
    epoch(loader(num_workers=2), 1)
    assert torch.equal(torch.get_rng_state(), before)


def test_a_saved_position_resumes_with_the_next_batch_then_whole_epochs():
    interrupted = loader()
    interrupted.sampler.set_epoch(2)
    batches = iter(interrupted)
    seen = [next(batches).tolist(), next(batches).tolist()]
    assert interrupted.state_dict() == {"epoch": 2, "batches": 2}

    resumed = loader()
    resumed.load_state_dict(interrupted.state_dict())
    assert seen + epoch(resumed, 2) == expected(2)
    assert epoch(resumed, 3) == expected(3)  # the position applies to the iteration it was saved in, once


def test_a_position_at_an_epoch_end_resumes_at_the_start_of_the_next_epoch():
    finished = loader()
    epoch(finished, 1)
    resumed = loader()
    resumed.load_state_dict(finished.state_dict())
    batches = iter(resumed)  # Lightning creates the iterator, then sets the epoch it resumes
    resumed.sampler.set_epoch(2)
    assert [batch.tolist() for batch in batches] == expected(2)


def test_workers_resume_at_the_same_batch():
    interrupted = loader(num_workers=2, persistent_workers=True)
    interrupted.sampler.set_epoch(1)
    batches = iter(interrupted)
    next(batches)
    resumed = loader(num_workers=2)
    resumed.load_state_dict(interrupted.state_dict())
    assert epoch(resumed, 1) == expected(1)[1:]


def test_each_ddp_process_gets_the_share_of_lightnings_distributed_sampler_and_resumes_in_it():
    for rank in (0, 1):
        share = list(DistributedSampler(DATA, num_replicas=2, rank=rank, shuffle=True, seed=7))
        assert sum(epoch(loader(num_replicas=2, rank=rank), 0), []) == share
        resumed = loader(num_replicas=2, rank=rank)
        resumed.load_state_dict({"epoch": 0, "batches": 1})
        assert sum(epoch(resumed, 0), []) == share[3:]


def test_the_data_module_carries_the_position_and_its_loaders_leave_the_global_rng_alone(shapes_root):
    _, processor = build_tiny_llava(TinyLlavaSpec())

    def datamodule() -> LVLMDataModule:
        data = LVLMDataModule(
            str(shapes_root / "train.json"), str(shapes_root), batch_size=8, val_fraction=0.1, limit_train=32, seed=3
        ).bind(processor, VicunaV1())
        data.setup("fit")
        return data

    def ids(batches) -> list[list[str]]:
        return [[meta["id"] for meta in batch["meta"]] for batch in batches]

    interrupted = datamodule()
    before = torch.get_rng_state()
    whole = ids(interrupted.train_dataloader())
    assert torch.equal(torch.get_rng_state(), before), "training"
    ids(interrupted.val_dataloader())
    assert torch.equal(torch.get_rng_state(), before), "validation"

    batches = iter(interrupted.train_dataloader())
    next(batches)
    resumed = datamodule()
    resumed.load_state_dict(interrupted.state_dict())
    assert ids(resumed.train_dataloader()) == whole[1:]
