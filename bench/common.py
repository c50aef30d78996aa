"""Helpers shared by the bench scripts: device label, timing that waits for the GPU."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


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
