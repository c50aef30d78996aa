"""Routing chosen attention modules through a registered attention implementation for a while (analyses record
through it, interventions edit through it)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


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
