"""SmolVLM family (`HuggingFaceTB/SmolVLM2-*`, transformers' `SmolVLMForConditionalGeneration`): Idefics3's pathway
(image splitting + global view, pixel shuffle by 3 or 4, Linear, a SmolLM2 Llama) under its own model type."""

from __future__ import annotations

from sinkflow.models.families.idefics3 import Idefics3Family


class SmolVLMFamily(Idefics3Family, name="smolvlm"):
    """SmolVLM / SmolVLM2; everything else as Idefics3."""

    variant = "smolvlm"
