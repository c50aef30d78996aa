"""The production scoring path synchronises across 2 processes (gloo): every rank updates `BenchmarkScores` with
its own records and gets the single-process scores, a padded duplicate counted once."""

import os
import socket

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

pytestmark = pytest.mark.slow  # two processes (gloo)
ANSWERS, PREDICTIONS = ["yes", "no", "yes", "no", "yes"], ["yes", "yes", "yes", "no", "no"]
POPE = [
    {
        "benchmark": "pope",
        "id": f"random/{i}",
        "category": "random",
        "answer": a,
        "prediction": p,
        "scope": "local",
        "prompt": "p",
    }
    for i, (a, p) in enumerate(zip(ANSWERS, PREDICTIONS))
]
# MME: image a.jpg's two questions land on different ranks (strided sharding splits every pair).
MME = [
    {
        "benchmark": "mme",
        "id": f"count/{img}/{k % 2}",
        "category": "count",
        "image": img,
        "answer": a,
        "prediction": p,
        "scope": "global",
    }
    for k, (img, a, p) in enumerate(
        [("a.jpg", "Yes", "Yes"), ("a.jpg", "No", "No"), ("b.jpg", "Yes", "No"), ("b.jpg", "No", "No")]
    )
]
OPEN = [
    {
        "benchmark": "open",
        "id": str(i),
        "category": "count",
        "answer": "3",
        "prediction": p,
        "routing": {"route": "both", "seconds": 0.1 * (i + 1)},
    }
    for i, p in enumerate(["3", "4", "3."])
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, queue) -> None:
    import torch

    from sinkflow.eval.benchmark_scores import BenchmarkScores
    from sinkflow.sinks.stats import SinkStats

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    scores = BenchmarkScores()
    scores.update([POPE[i] for i in [0, 2, 4, 1, 3, 0][rank::2]])  # DistributedSampler order, item 0 padded again
    scores.update(MME[rank::2])
    if rank == 0:
        scores.update(OPEN)  # uneven states: rank 0 holds more bytes
    # A rank that answered nothing (a resumed evaluation's earlier records are on rank 0 only).
    rank_zero_only = BenchmarkScores()
    rank_zero_only.update(POPE if rank == 0 else [])
    # Sink statistics when only rank 0 saw images (rank 1's shard was text-only): both ranks still agree.
    stats = SinkStats()
    if rank == 0:
        stats.update(torch.tensor([[1.0, 200.0]]), torch.tensor([[False, True]]))
    else:
        stats.add_nothing()  # what SinkflowModule does on a rank without images
    per_image = stats.compute()[0]["sinks/per_image"]
    # Image "a" padded onto rank 1 again: counted once (1 sink over 2 images, not 2 over 3).
    padded = SinkStats()
    norms = torch.tensor([[1.0, 200.0], [1.0, 2.0]])[: 2 - rank]
    padded.update(norms, norms >= 100, keys=["a", "b"][: 2 - rank])
    deduplicated = padded.compute()[0]["sinks/per_image"]
    queue.put((rank, scores.compute(), rank_zero_only.compute(), per_image, deduplicated))
    dist.destroy_process_group()


def test_two_processes_give_the_single_process_scores():
    from sinkflow.eval.metrics import score_records

    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    mp.start_processes(_worker, args=(_free_port(), queue), nprocs=2, start_method="spawn")
    results = sorted((queue.get() for _ in range(2)), key=lambda r: r[0])
    single = score_records(POPE + MME + OPEN)
    assert single["pope/random/accuracy"] == 0.6  # 3/5, not the 4/6 a naive sum over padded shards gives
    assert single["mme/count/acc_plus"] == 50.0  # a.jpg both right, b.jpg not: pairs rebuilt across ranks
    assert [r[1] for r in results] == [single, single]
    assert [r[2] for r in results] == [score_records(POPE)] * 2
    assert [r[3] for r in results] == [1.0, 1.0]
    assert [r[4] for r in results] == [0.5, 0.5]
