"""Evaluation throughput, in one run on the same model and questions:
- batched greedy generation (left padding) vs one question at a time (target speed-up >= 3x on CPU);
- the evaluation questions in the data module's order, longest prompt first (`dataset.sort_eval`, the default) vs
  as the sets list them: padding tokens per batch and seconds, with their ratios.
The predictions must be identical in every mode; prints one JSON line.

    python bench/eval_throughput.py [--questions 64] [--batch 8] [--max-new-tokens 8] [--repeats 5] [--accelerator cuda]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile

import torch
from hydra.utils import instantiate

from common import device_label, timed
from sinkflow.config import compose_config
from sinkflow.data.collate import Collator, batch_to
from sinkflow.data.templates import VicunaV1
from sinkflow.models.families.llava import LlavaFamily
from sinkflow.models.tiny import TinyLlavaSpec, build_tiny_llava
from sinkflow.module import SinkflowModule
from sinkflow.sinks.strategies.none import NoneStrategy


def eval_questions(per_set: int, sort: bool) -> list[dict]:
    """The shapes evaluation questions as the data module orders them (`per_set` of each set: POPE, MME, MMStar and
    open, whose prompts differ in length)."""
    root = tempfile.mkdtemp()
    cfg = compose_config([f"dataset.prepare.root={root}", f"dataset.limit_eval={per_set}"], "evaluate")
    datamodule = instantiate(cfg.dataset, sort_eval=sort)
    datamodule.prepare_data()
    datamodule.setup("test")
    return datamodule.test_set


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
    per_set = max(args.questions // 4, 1)
    samples, ordered = eval_questions(per_set, sort=False), eval_questions(per_set, sort=True)
    collate = Collator(processor, VicunaV1(), generate=True)

    def batches(questions):
        return [collate(questions[i : i + args.batch]) for i in range(0, len(questions), args.batch)]

    def padding(questions) -> int:
        return sum(int((batch["attention_mask"] == 0).sum()) for batch in batches(questions))

    def batched_pass(questions):
        return [p for batch in batches(questions) for p in module.generate(batch_to(batch, device))]

    def single_pass():
        return [module.generate(batch_to(collate([s]), device))[0] for s in samples]

    def by_id(questions, predictions):
        return {(s["meta"]["benchmark"], s["id"]): p for s, p in zip(questions, predictions)}

    # One untimed pass of each warms every kernel and shape; medians over repeats, alternating the modes.
    batched, single, sorted_ = batched_pass(samples), single_pass(), batched_pass(ordered)
    times = {"batched": [], "single": [], "sorted": []}
    for _ in range(args.repeats):
        times["batched"].append(timed(lambda: batched_pass(samples), device)[1])
        times["single"].append(timed(single_pass, device)[1])
        times["sorted"].append(timed(lambda: batched_pass(ordered), device)[1])
    batched_s, single_s, sorted_s = (statistics.median(times[k]) for k in ("batched", "single", "sorted"))
    padded, padded_sorted = padding(samples), padding(ordered)
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
                "padding_tokens_unsorted": padded,
                "padding_tokens_sorted": padded_sorted,
                "padding_ratio": round(padded_sorted / max(padded, 1), 3),
                "sorted_s": round(sorted_s, 3),
                "sorted_speedup": round(batched_s / sorted_s, 2),
                "same_predictions": batched == single and by_id(ordered, sorted_) == by_id(samples, batched),
                "repeats": args.repeats,
                "device": device_label(device),
            }
        )
    )


if __name__ == "__main__":
    main()
