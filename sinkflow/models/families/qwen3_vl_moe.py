"""Qwen3-VL-MoE family (`Qwen/Qwen3-VL-30B-A3B-*`, `-235B-A22B-*`): Qwen3-VL's vision side, DeepStack and positions
over a mixture-of-experts language model; the pathway is Qwen3-VL's (docs/models.md#qwen3-vl)."""

from __future__ import annotations

from sinkflow.models.families.qwen3_vl import Qwen3VLFamily


class Qwen3VLMoeFamily(Qwen3VLFamily, name="qwen3_vl_moe"):
    """Qwen3-VL-MoE; everything as Qwen3-VL."""

    variant = "qwen3_vl_moe"
