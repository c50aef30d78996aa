"""Evaluation throughput: batched greedy generation (left padding) vs one question at a time, same model and
questions, in one run. The predictions must be identical; prints one JSON line; target speed-up >= 3x on CPU.

    python bench/eval_throughput.py [--questions 64] [--batch 8] [--max-new-tokens 8] [--repeats 5] [--accelerator cuda]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile

import torch

from common import device_label, timed
from sinkflow.benchmarks.pope import load_pope
from sinkflow.data.collate import Collator, batch_to
from sinkflow.data.datamodule import eval_sample
from sinkflow.data.templates import VicunaV1
from sinkflow.models.families.llava import LlavaFamily
from sinkflow.models.tiny import TinyLlavaSpec, build_tiny_llava
from sinkflow.module import SinkflowModule
from sinkflow.shapes import generate_shapes
from sinkflow.sinks.strategies.none import NoneStrategy


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--accelerator", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args()
    device = torch.device(args.accelerator)
    model, processor = build_tiny_llava(TinyLlavaSpec())
    module = (
        SinkflowModule(
            model, processor, LlavaFamily(), NoneStrategy(), generation={"max_new_tokens": args.max_new_tokens}
        )
        .eval()
        .to(device)
    )
    root = generate_shapes(tempfile.mkdtemp(), n_train=1, n_eval=max(args.questions // 4, 1))
    samples = [eval_sample(item) for item in load_pope(root / "pope", root / "eval_images")][: args.questions]
    collate = Collator(processor, VicunaV1(), generate=True)

    def generate(chunk):
        return module.generate(batch_to(collate(chunk), device))

    def batched_pass():
        return [p for i in range(0, len(samples), args.batch) for p in generate(samples[i : i + args.batch])]

    def single_pass():
        return [generate([s])[0] for s in samples]

    # One untimed pass of each warms every kernel and shape; medians over repeats, alternating the two modes.
    batched, single = batched_pass(), single_pass()
    batched_times, single_times = [], []
    for _ in range(args.repeats):
        batched_times.append(timed(batched_pass, device)[1])
        single_times.append(timed(single_pass, device)[1])
    batched_s, single_s = statistics.median(batched_times), statistics.median(single_times)
    print(
        json.dumps(
            {
                "bench": "eval_throughput",
                "questions": len(samples),
                "batch": args.batch,
                "max_new_tokens": args.max_new_tokens,
                "batched_s": round(batched_s, 3),
                "one_at_a_time_s": round(single_s, 3),
                "speedup": round(single_s / batched_s, 2),
                "target_speedup": 3.0,
                "same_predictions": batched == single,
                "repeats": args.repeats,
                "device": device_label(device),
            }
        )
    )


if __name__ == "__main__":
    main()
