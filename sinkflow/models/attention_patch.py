"""Routing chosen attention modules through a registered attention implementation for a while (analyses and
sink-aware pruning record through it, interventions edit through it)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

RECORDING = "sinkflow_recording"  # the attention implementation of a module being recorded
# recorder(query [B, H, T, d], key [B, H_kv, T, d], attention_mask, scaling), called before the module's SDPA.
Recorder = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None, float | None], None]
_RECORDERS: dict[nn.Module, Recorder] = {}


@contextmanager
def patched_attention(states: dict[nn.Module, object], registry: dict, implementation: str) -> Iterator[None]:
    """While inside, each attention module in `states` runs the registered attention `implementation`, which finds
    the module's state in `registry` (set here, removed on exit).

    Each module gets its own copy of the config naming the implementation: configs are shared by every layer and
    the model's mask builder, which keep theirs (so the masks are the model's own implementation's)."""
    saved = {}
    for module, state in states.items():
        saved[module] = module.config
        patched = copy.copy(module.config)
        patched._attn_implementation_internal = implementation
        module.config, registry[module] = patched, state
    try:
        yield
    finally:
        for module, config in saved.items():
            module.config = config
            del registry[module]


def _recording_attention(module: nn.Module, query, key, value, attention_mask, **kwargs):
    """The module's recorder sees its queries and keys; its output is SDPA's, as without recording."""
    _RECORDERS[module](query.detach(), key.detach(), attention_mask, kwargs.get("scaling"))
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register(RECORDING, _recording_attention)


@contextmanager
def recording_attention(modules: Iterable[nn.Module], recorder: Recorder) -> Iterator[None]:
    """While inside, every call of these attention modules is recorded (the model's SDPA masks are unchanged)."""
    with patched_attention(dict.fromkeys(modules, recorder), _RECORDERS, RECORDING):
        yield
