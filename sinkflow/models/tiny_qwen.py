"""Offline tiny Qwen2-VL / Qwen2.5-VL / Qwen3-VL (dense and MoE): tokenizer, image processor and model built from
configs, saved in HF format.

Like the tiny LLaVA, a real `Qwen2VLForConditionalGeneration` / `Qwen2_5_VLForConditionalGeneration` /
`Qwen3VLForConditionalGeneration` / `Qwen3VLMoeForConditionalGeneration` with random weights, saved once and always
loaded back through `from_pretrained`. Qwen's ChatML template and special tokens are reproduced; images are cut into
8-px patches (2x2 windows merged into one LLM token) at 32-64 px.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMoeConfig,
    Qwen3VLMoeForConditionalGeneration,
)

from sinkflow.checks import choice
from sinkflow.models.processor import ImageTextProcessor
from sinkflow.models.tiny import TinyLlavaSpec, build_chatml_tokenizer, llm_config, save_once, seeded_model

QWEN_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Qwen2-VL's ChatML layout (default system prompt, image as vision_start / image_pad / vision_end).
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
VARIANTS = {
    "qwen2_vl": (Qwen2VLConfig, Qwen2VLForConditionalGeneration),
    "qwen2_5_vl": (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration),
    "qwen3_vl": (Qwen3VLConfig, Qwen3VLForConditionalGeneration),
    "qwen3_vl_moe": (Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration),
}


@dataclass(frozen=True)
class TinyQwenSpec(TinyLlavaSpec):
    """Sizes of a tiny Qwen-VL; `variant` is qwen2_vl, qwen2_5_vl, qwen3_vl or qwen3_vl_moe. Images are resized to
    32-64 px."""

    variant: str = "qwen2_vl"
    patch_size: int = 8
    min_pixels: int = 32 * 32
    max_pixels: int = 64 * 64
    revision: int = 1


def build_tiny_qwen(spec: TinyQwenSpec):
    """Build the tiny model and its processor in memory (random weights seeded by `spec.seed`)."""
    choice("model.checkpoint.variant", spec.variant, VARIANTS)
    tokenizer = build_chatml_tokenizer(
        spec.vocab_size,
        QWEN_SPECIALS,
        {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
        QWEN_CHAT_TEMPLATE,
    )
    image_processor = Qwen2VLImageProcessor(
        min_pixels=spec.min_pixels,
        max_pixels=spec.max_pixels,
        patch_size=spec.patch_size,
        temporal_patch_size=2,
        merge_size=2,
    )
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    head_dim = spec.text_hidden // spec.text_heads
    quarter = head_dim // 8  # mrope_section (t, h, w) must sum to head_dim / 2
    text = {
        **llm_config(spec, tokenizer),
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [2 * quarter, quarter, quarter],
        },
    }
    vision = {
        "depth": spec.vision_layers,
        "embed_dim": spec.vision_hidden,
        "hidden_size": spec.text_hidden,
        "num_heads": spec.vision_heads,
        "patch_size": spec.patch_size,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    # Qwen2.5-VL's and Qwen3-VL's ViT: an MLP of its own width, and the merger's output width named apart.
    sized_vision = {
        "depth": spec.vision_layers,
        "hidden_size": spec.vision_hidden,
        "out_hidden_size": spec.text_hidden,
        "intermediate_size": 4 * spec.vision_hidden,
        "num_heads": spec.vision_heads,
        "patch_size": spec.patch_size,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    if spec.variant == "qwen2_5_vl":
        vision = {
            **sized_vision,
            "window_size": 4 * spec.patch_size,
            "fullatt_block_indexes": [spec.vision_layers - 1],
        }
    if spec.variant in ("qwen3_vl", "qwen3_vl_moe"):
        # Qwen3-VL's M-RoPE interleaves (t, h, w) over the frequencies; the h and w shares are 20 / 64 of them, as in
        # the released checkpoints' [24, 20, 20].
        shared = head_dim // 2 * 5 // 16
        text = {
            **text,
            "head_dim": head_dim,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 5000000.0,
                "mrope_section": [head_dim // 2 - 2 * shared, shared, shared],
                "mrope_interleaved": True,
            },
        }
        vision = {
            **sized_vision,
            # The learned position grid (resampled to each image's grid) covers a 64 px image's 8 x 8 patches.
            "num_position_embeddings": 64,
            # DeepStack: each block before the last feeds one of the first LLM layers (the released models: 3 blocks of
            # 24-27).
            "deepstack_visual_indexes": list(range(min(spec.vision_layers - 1, spec.text_layers))),
        }
    if spec.variant == "qwen3_vl_moe":
        # Every layer's MLP a mixture of 4 experts, 2 per token (the 30B-A3B: 128, 8).
        text = {**text, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 2 * spec.text_hidden}
    config_cls, model_cls = VARIANTS[spec.variant]
    config = config_cls(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    return seeded_model(model_cls, config, tokenizer, spec.seed), ImageTextProcessor(tokenizer, image_processor)


def ensure_tiny_qwen(cache_dir: str | Path, **sizes) -> str:
    """Return a local HF checkpoint dir of the tiny Qwen-VL for these sizes, building and saving it on first use."""
    spec = TinyQwenSpec(**sizes)
    return save_once(Path(cache_dir) / f"tiny_{spec.variant}", spec, build_tiny_qwen)
