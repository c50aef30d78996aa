"""Offline tiny InternVL3: tokenizer, tiling image processor and model built from configs, saved in HF format.

A real `InternVLForConditionalGeneration` (InternViT + pixel shuffle + MLP + Qwen2) with random weights, saved once
and loaded back through `from_pretrained`. InternVL3's ChatML layout and `<img>` / `<IMG_CONTEXT>` / `</img>` tokens are
reproduced; images are tiled into 32-px crops plus a thumbnail (at most 4 crops), each tile 4 x 4 patches of 8 px
folded 2 x 2 into 4 LLM tokens: a 64 px square image is 5 tiles = 20 tokens, a 48 x 32 one 3 tiles = 12.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transformers import GotOcr2ImageProcessorPil, InternVLConfig, InternVLForConditionalGeneration

from sinkflow.models.tiled_processors import InternVLImages
from sinkflow.models.tiny import TinyLlavaSpec, build_chatml_tokenizer, llm_config, save_once, seeded_model, vit_config

INTERNVL_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"]
# InternVL3's ChatML layout (an image part is `<IMG_CONTEXT>\n`, which the processor expands per tile).
INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<IMG_CONTEXT>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class TinyInternVLSpec(TinyLlavaSpec):
    """Sizes of a tiny InternVL3: `tile` px tiles of `patch_size` px patches, at most `max_tiles` crops per image."""

    tile: int = 32
    patch_size: int = 8
    max_tiles: int = 4
    revision: int = 1


def build_tiny_internvl(spec: TinyInternVLSpec):
    """Build the tiny model and its processor in memory (random weights seeded by `spec.seed`)."""
    tokenizer = build_chatml_tokenizer(
        spec.vocab_size,
        INTERNVL_SPECIALS,
        {
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "context_image_token": "<IMG_CONTEXT>",
            "video_token": "<video>",
        },
        INTERNVL_CHAT_TEMPLATE,
    )
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": spec.tile, "width": spec.tile}, crop_to_patches=True, min_patches=1, max_patches=spec.max_tiles
    )
    text = {"model_type": "qwen2", **llm_config(spec, tokenizer), "tie_word_embeddings": False}
    vision = vit_config(spec, spec.tile)
    tokens_per_tile = (spec.tile // spec.patch_size // 2) ** 2
    config = InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=tokens_per_tile,
        downsample_ratio=0.5,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )
    model = seeded_model(InternVLForConditionalGeneration, config, tokenizer, spec.seed)
    return model, InternVLImages(tokenizer, image_processor, tokens_per_tile)


def ensure_tiny_internvl(cache_dir: str | Path, **sizes) -> str:
    """Return a local HF checkpoint dir of the tiny InternVL3 for these sizes, building and saving it on first use."""
    return save_once(Path(cache_dir) / "tiny_internvl", TinyInternVLSpec(**sizes), build_tiny_internvl)
