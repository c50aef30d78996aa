"""What the sink methods cost: prefill time and peak memory with a quarter of the visual tokens against all of them,
and the attention interventions' forward time against none, in one run (ratios against `none` measured alongside).

The model is LLaVA's tiny architecture at bench size (ViT 4x256, LLM 4x512) on `--image-size` images (336 px:
441 visual tokens of 16-px patches, a LLaVA-like share of the sequence), random weights, simulated sinks planted.
- Prefill: the LLM's first forward of a 1-token generation (`models.prefill.timing_prefill`) for `none`,
  `prune` keeping 25 % of each image's tokens (VisionZip's 10-in-64 contextual share) and FastV keeping 25 % after
  layer 2 (of this model's 4: half the layers still see every token, so its target is prune's). Peak memory: on a
  GPU the peak allocated during an answer; on the CPU the peak growth of the resident memory during it (the heap
  trimmed first), each method in a fresh process. Target: >= 2x faster prefill at 25 %.
- Attention interventions: a forward with labels (a training step's) under pai, vaf, var (on the ViT sinks), lsg
  and fastv, against none, SDPA. Target: <= 1.10x.

With `--full-size llava-1.5-7b` (or `qwen2.5-vl-7b`) the model is that released architecture with random weights in
bf16 (`models.full_size`; 576 visual tokens per LLaVA image), for a GPU: the issue's figure is
`--full-size llava-1.5-7b --batch 8 --accelerator cuda`.

    python bench/methods.py [--image-size 336] [--batch 4] [--repeats 10] [--accelerator cuda] [--full-size NAME]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import multiprocessing
import os
import tempfile
import threading
import time

import torch
from hydra.utils import instantiate

from common import SIZES, device_label, round_robin, timed
from sinkflow.config import compose_config
from sinkflow.data.collate import Collator, batch_to
from sinkflow.data.instruct import load_instruct
from sinkflow.models.families.base import FAMILIES
from sinkflow.models.families.llava import LlavaFamily
from sinkflow.models.full_size import FULL_SIZES, build_full_size
from sinkflow.models.prefill import timing_prefill
from sinkflow.module import SinkflowModule
from sinkflow.shapes import generate_shapes
from sinkflow.sinks.detectors.norm_threshold import NormThreshold
from sinkflow.sinks.simulated import SimulatedSinks

PREFILL_TARGET = 2.0  # prefill speed-up at a quarter of the visual tokens
OVERHEAD_TARGET = 1.10  # attention interventions' forward time over none's
# name -> (sink_strategy overrides, intervention overrides)
PRUNED = {
    "none": (["sink_strategy=none"], ["intervention=none"]),
    "prune_25": (
        ["sink_strategy=prune", "sink_strategy.strategy.budget=0.25", "sink_strategy.strategy.contextual=0.15625"],
        ["intervention=none"],
    ),
    "fastv_25": (["sink_strategy=none"], ["intervention=fastv", "intervention.intervention.ratio=0.75"]),
}
INTERVENED = {
    "none": ["intervention=none"],
    "pai": ["intervention=pai"],
    "vaf": ["intervention=vaf"],
    "var": ["intervention=var", "intervention.intervention.sink_dims=null"],
    "lsg": ["intervention=lsg"],
    "fastv": ["intervention=fastv"],
}


def build(strategy: list[str], intervention: list[str], args) -> tuple[SinkflowModule, dict, dict]:
    """The bench model with a strategy and an intervention, and a generation and a training batch."""
    torch.manual_seed(0)
    if args.full_size:
        model, processor = build_full_size(args.full_size, args.accelerator, torch.bfloat16)
        family_cls = FAMILIES[FULL_SIZES[args.full_size][0]]
    else:
        model, processor = LlavaFamily.build_tiny(image_size=args.image_size, **SIZES)
        family_cls = LlavaFamily
    family, template = family_cls(), family_cls.default_template()
    cfg = compose_config([*strategy, *intervention])
    module = SinkflowModule(
        model,
        processor,
        family,
        instantiate(cfg.sink_strategy.strategy),
        NormThreshold(),
        simulated_sinks=SimulatedSinks(k=2, norm=150.0),
        question_collator=Collator(processor, template, generate=True),
        intervention=instantiate(cfg.intervention.intervention),
    )
    module = module.eval().to(args.accelerator)
    module.generation.max_new_tokens = 1
    root = generate_shapes(tempfile.mkdtemp(), n_train=args.batch, n_eval=1, image_size=args.image_size)
    samples = load_instruct(root / "train.json", root)[: args.batch]
    device = torch.device(args.accelerator)
    answering = batch_to(module.question_collator(samples), device)
    training = batch_to(Collator(processor, template)(samples), device)
    return module, answering, training


def prefill_seconds(module: SinkflowModule, batch: dict, device: torch.device) -> float:
    with torch.no_grad(), timing_prefill(module.hf) as seconds:
        module.generate(batch)
    return seconds[0]


def forward_seconds(module: SinkflowModule, batch: dict, device: torch.device) -> float:
    with torch.no_grad():
        return timed(lambda: module(batch), device)[1]


def resident_mb() -> float:
    """The process's resident memory now (Linux), MB."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_growth_mb(name: str, args) -> float:
    """In this (fresh) process, during one answer: on a GPU the peak allocated, on the CPU the peak growth of the
    resident memory (sampled every millisecond, the heap trimmed first so that freed memory is not reused), MB."""
    module, answering, _ = build(*PRUNED[name], args)
    device = torch.device(args.accelerator)
    if args.accelerator == "cuda":
        torch.cuda.reset_peak_memory_stats()
        prefill_seconds(module, answering, device)
        return torch.cuda.max_memory_allocated() / 2**20
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    before, peak, done = resident_mb(), [0.0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], resident_mb())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    prefill_seconds(module, answering, device)
    done.set()
    sampler.join()
    return max(peak[0], resident_mb()) - before


def measure(args) -> dict:
    device = torch.device(args.accelerator)
    built = {name: build(*overrides, args) for name, overrides in PRUNED.items()}
    modules = {name: module for name, (module, _, _) in built.items()}
    answering = built["none"][1]
    timing = argparse.Namespace(warmup=2, repeats=args.repeats)
    prefill = round_robin(modules, prefill_seconds, answering, device, timing)
    visual = {name: int(module.pathway(answering, "left").columns.visual.sum()) for name, module in modules.items()}
    with multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        peaks = {name: pool.apply(peak_growth_mb, (name, args)) for name in PRUNED}
    intervened = {name: build(["sink_strategy=none"], overrides, args)[0] for name, overrides in INTERVENED.items()}
    forward = round_robin(intervened, forward_seconds, built["none"][2], device, timing)
    speedup = {name: round(prefill["none"] / seconds, 3) for name, seconds in prefill.items()}
    overhead = {name: round(seconds / forward["none"], 3) for name, seconds in forward.items()}
    return {
        "bench": "methods",
        "image_tokens": visual["none"] // args.batch,
        "prefill_ms": {name: round(1000 * s, 2) for name, s in prefill.items()},
        "prefill_speedup_vs_none": speedup,
        "peak_memory_mb": {name: round(mb, 1) for name, mb in peaks.items()},
        "llm_input_visual_tokens": visual,
        "forward_ms": {name: round(1000 * s, 2) for name, s in forward.items()},
        "forward_overhead_vs_none": overhead,
        # FastV prunes after layer 2 of this model's 4 (of 32 in the paper's LLaVA): half its layers see every token.
        "prefill_within_target": speedup["prune_25"] >= PREFILL_TARGET,
        "overhead_within_target": max(v for k, v in overhead.items() if k != "fastv") <= OVERHEAD_TARGET,
        "model": args.full_size or "bench-size LLaVA",
        "batch": args.batch,
        "repeats": args.repeats,
        "device": device_label(device),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image-size", type=int, default=336)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--full-size", choices=sorted(FULL_SIZES), help="a released architecture, random weights, bf16")
    print(json.dumps(measure(parser.parse_args())), flush=True)


if __name__ == "__main__":
    main()
