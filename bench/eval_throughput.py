"""Evaluation throughput: batched greedy generation (left padding) vs one question at a time, same model and
questions, in one run. The predictions must be identical; prints one JSON line; target speed-up >= 3x on CPU.

    python bench/eval_throughput.py [--questions 64] [--batch 8] [--max-new-tokens 8] [--accelerator cuda]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from sinkflow.data.benchmarks.pope import load_pope
from sinkflow.data.collate import Collator
from sinkflow.data.datamodule import eval_sample
from sinkflow.data.shapes import generate_shapes
from sinkflow.data.templates import VicunaV1
from sinkflow.models.families.llava import LlavaFamily
from sinkflow.models.tiny import TinyLlavaSpec, build_tiny_llava
from sinkflow.module import SinkflowModule
from sinkflow.sinks.strategies.none import NoneStrategy


def timed(function, device: torch.device):
    start = time.perf_counter()
    result = function()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--accelerator", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args()
    device = torch.device(args.accelerator)
    model, processor = build_tiny_llava(TinyLlavaSpec())
    module = SinkflowModule(model, processor, LlavaFamily(), NoneStrategy(),
                            generation={"max_new_tokens": args.max_new_tokens}).eval().to(device)
    root = generate_shapes(tempfile.mkdtemp(), n_train=1, n_eval=max(args.questions // 4, 1))
    samples = [eval_sample(item) for item in load_pope(root / "pope", root / "eval_images")][: args.questions]
    collate = Collator(processor, VicunaV1(), generate=True)

    def generate(chunk):
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in collate(chunk).items()}
        return module.generate(batch)

    generate(samples[: args.batch])  # warm-up
    batched, batched_s = timed(lambda: [p for i in range(0, len(samples), args.batch)
                                        for p in generate(samples[i:i + args.batch])], device)
    single, single_s = timed(lambda: [generate([s])[0] for s in samples], device)
    print(json.dumps({
        "bench": "eval_throughput",
        "questions": len(samples),
        "batch": args.batch,
        "max_new_tokens": args.max_new_tokens,
        "batched_s": round(batched_s, 3),
        "one_at_a_time_s": round(single_s, 3),
        "speedup": round(single_s / batched_s, 2),
        "target_speedup": 3.0,
        "same_predictions": batched == single,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
    }))


if __name__ == "__main__":
    main()
