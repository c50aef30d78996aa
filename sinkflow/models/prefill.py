"""How long a generation's prefill takes: the first forward of the language model's decoder."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch
from torch import nn

from sinkflow.models.build import unwrap


@contextmanager
def timing_prefill(model: nn.Module) -> Iterator[list[float]]:
    """While inside, the seconds of the decoder's first forward (the prefill of one `generate`) are appended to the
    yielded list (the device synchronised around it, so the time is the device's work, not its queueing)."""
    seconds: list[float] = []
    decoder = unwrap(model).get_decoder()
    started: list[float] = []

    def sync(tensor: torch.Tensor | None) -> None:
        if tensor is not None and tensor.is_cuda:
            torch.cuda.synchronize(tensor.device)

    def before(module, args, kwargs):
        if not started:
            sync(kwargs.get("inputs_embeds"))
            started.append(time.perf_counter())

    def after(module, args, kwargs, output):
        if len(started) == 1 and not seconds:
            sync(output.last_hidden_state)
            seconds.append(time.perf_counter() - started[0])

    with ExitStack() as stack:
        stack.callback(decoder.register_forward_pre_hook(before, with_kwargs=True).remove)
        stack.callback(decoder.register_forward_hook(after, with_kwargs=True).remove)
        yield seconds
