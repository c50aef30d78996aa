"""Padding-free packing (`dataset.packing=true`) against padded rows: the share of padding in the LLM's input and
the supervised training tokens per second, on the shapes instruct mix, in one run.

The mix is the shapes training set with its captions (two-turn questions with short answers and one-sentence
captions of every shape: lengths vary as in instruction data); the model is LLaVA's
tiny architecture at bench size (ViT 4x256, LLM 4x512) on `--image-size` images, LoRA r16. Each batch trains a step
(forward and backward, no optimiser step) padded, packed into rows no longer than its longest sample, and packed into
rows of `--max-length` tokens (`dataset.packing=true`), in turn; tokens/s counts the batch's real tokens. On a CPU
(SDPA) a packed row's attention is one masked square, so long rows cost attention the padding saved elsewhere; on a
GPU with flash-attention the packed samples attend through its variable-length path.

    python bench/packing.py [--batch 16] [--batches 12] [--image-size 64] [--max-length 512] [--accelerator cuda]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile

import torch

from common import SIZES, device_label, timed
from sinkflow.data.collate import Collator, batch_to
from sinkflow.data.instruct import load_instruct
from sinkflow.models.build import LoraSpec, prepare_for_training
from sinkflow.models.families.llava import LlavaFamily
from sinkflow.models.packing import bins
from sinkflow.module import SinkflowModule
from sinkflow.shapes import generate_shapes
from sinkflow.sinks.strategies.none import NoneStrategy


def step_seconds(module: SinkflowModule, batch: dict, device: torch.device) -> float:
    def step():
        module(batch).loss.backward()
        module.zero_grad(set_to_none=True)

    return timed(step, device)[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=512, help="tokens per packed row (dataset.max_length)")
    parser.add_argument("--accelerator", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.accelerator)
    torch.manual_seed(0)
    model, processor = LlavaFamily.build_tiny(image_size=args.image_size, **SIZES)
    family, template = LlavaFamily(), LlavaFamily.default_template()
    model = prepare_for_training(model, family, lora=LoraSpec(r=16, alpha=32, dropout=0.0))
    module = SinkflowModule(model, processor, family, NoneStrategy()).to(device).train()
    n = args.batch * (args.batches + args.warmup)
    root = generate_shapes(tempfile.mkdtemp(), n_train=n, n_eval=1, image_size=args.image_size, captions=True)
    records = load_instruct(root / "train.json", root)
    random.Random(0).shuffle(records)
    # name -> (collator, tokens per packed row: None for padded rows)
    layouts = {
        "padded": (Collator(processor, template, max_length=args.max_length), None),
        "packed_longest": (Collator(processor, template, pack=True), 0),
        "packed_max_length": (Collator(processor, template, max_length=args.max_length, pack=True), args.max_length),
    }
    totals = {name: [0.0, 0, 0] for name in layouts}  # seconds, real tokens, input positions (padding included)
    for index in range(args.warmup + args.batches):
        samples = records[index * args.batch : (index + 1) * args.batch]
        for name, (collate, capacity) in layouts.items():
            batch = batch_to(collate(samples), device)
            seconds = step_seconds(module, batch, device)
            if index < args.warmup:
                continue
            lengths = module.pathway(batch).inputs["attention_mask"].sum(1).tolist()
            rows = [[i] for i in range(len(lengths))] if capacity is None else bins(lengths, capacity or None)
            totals[name][0] += seconds
            totals[name][1] += sum(lengths)
            totals[name][2] += len(rows) * max(sum(lengths[i] for i in row) for row in rows)
    speed = {name: tokens / seconds for name, (seconds, tokens, _) in totals.items()}
    print(
        json.dumps(
            {
                "bench": "packing",
                "padding_fraction": {name: round(1 - tokens / slots, 4) for name, (_, tokens, slots) in totals.items()},
                "tokens_per_second": {name: round(s, 1) for name, s in speed.items()},
                "speedup_vs_padded": {name: round(s / speed["padded"], 3) for name, s in speed.items()},
                "batches": args.batches,
                "batch": args.batch,
                "max_length": args.max_length,
                "image_tokens": (args.image_size // 16) ** 2,
                "device": device_label(device),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
