"""Helpers shared by the bench scripts: the bench model size, device label, timing that waits for the GPU."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

# The tiny architectures at bench size (ViT 4x256, LLM 4x512): big enough that routing is a small share of a step.
SIZES = {
    "vision_hidden": 256,
    "vision_layers": 4,
    "vision_heads": 4,
    "text_hidden": 512,
    "text_layers": 4,
    "text_heads": 8,
    "text_kv_heads": 4,
}


def device_label(device: torch.device) -> str:
    return torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock times cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(function: Callable, device: torch.device):
    """(result, seconds) of `function()`, GPU work included."""
    start = time.perf_counter()
    result = function()
    synchronize(device)
    return result, time.perf_counter() - start


def round_robin(modules: dict, measure, batch: dict, device: torch.device, args) -> dict[str, float]:
    """Median seconds of `measure(module, batch, device)` per module, modules interleaved within each repeat."""
    times: dict[str, list[float]] = {name: [] for name in modules}
    for repeat in range(args.warmup + args.repeats):
        for name, module in modules.items():
            elapsed = measure(module, batch, device)
            if repeat >= args.warmup:
                times[name].append(elapsed)
    return {name: statistics.median(t) for name, t in times.items()}
