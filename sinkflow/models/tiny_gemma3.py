"""Offline tiny Gemma 3: tokenizer, image processor, processor and model built from configs, saved in HF format.

A real `Gemma3ForConditionalGeneration` (SigLIP ViT, the average-pooling projector, Gemma 3's text model with
sliding-window and global layers) with random weights, saved once and always loaded back through
`from_pretrained`. What the released checkpoints do is reproduced at a small size: the processor resizes every
image to one square (64 px here, 896 px there) and cuts it into patches (4 px, 14 px), the projector averages
4 x 4 patches into one token (16 x 16 patches -> 16 tokens here, 64 x 64 -> 256 there), Gemma's special tokens
and chat template (`<bos>` written by the template, turns closed by `<end_of_turn>`, an image as
`<start_of_image>`), and the 5:1 sliding-window : global layer pattern cut to one of each.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessorPil,
    Gemma3Processor,
    SiglipVisionConfig,
)

from sinkflow.models.tiny import TinyLlavaSpec, build_tokenizer, llm_config, save_once, seeded_model, vit_config

GEMMA_SPECIALS = [
    "<pad>",
    "<eos>",
    "<bos>",
    "<unk>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<start_of_image>",
    "<end_of_image>",
    "<image_soft_token>",
]
# Gemma 3's chat layout: `<bos>`, a system message folded into the first user turn, the assistant's turns named
# `model`, every turn closed by `<end_of_turn>`, text trimmed, an image as `<start_of_image>` (the processor expands
# it into the image block).
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] if messages[0]['content'] is string "
    "else messages[0]['content'][0]['text'] %}{% set prefix = system + '\n\n' %}{% set turns = messages[1:] %}"
    "{% else %}{% set prefix = '' %}{% set turns = messages %}{% endif %}"
    "{% for message in turns %}"
    "<start_of_turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{% if loop.first %}{{ prefix }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] | trim }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<start_of_image>"
    "{% elif part['type'] == 'text' %}{{ part['text'] | trim }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


@dataclass(frozen=True)
class TinyGemma3Spec(TinyLlavaSpec):
    """Sizes of the tiny Gemma 3: `image_size` px images in `patch_size` px patches, `pool` x `pool` patches averaged
    into one LLM token; the sliding-window layer sees the last `sliding_window` tokens (fewer than a prompt holds, so
    that the window matters)."""

    patch_size: int = 4
    pool: int = 4
    sliding_window: int = 24
    revision: int = 1


def build_tiny_gemma3(spec: TinyGemma3Spec) -> tuple[Gemma3ForConditionalGeneration, Gemma3Processor]:
    """Build the tiny model and its processor in memory (random weights seeded by `spec.seed`)."""
    side = spec.image_size // spec.patch_size
    if side % spec.pool:
        raise ValueError(f"a {side} x {side} patch grid does not pool by {spec.pool}")
    tokens_per_image = (side // spec.pool) ** 2
    tokenizer = build_tokenizer(
        spec.vocab_size,
        specials=GEMMA_SPECIALS,
        bos="<bos>",
        eos="<eos>",
        pad="<pad>",
        unk="<unk>",
        extra_special_tokens={
            "image_token": "<image_soft_token>",
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
        },
        chat_template=GEMMA_CHAT_TEMPLATE,
    )
    image_processor = Gemma3ImageProcessorPil(
        size={"height": spec.image_size, "width": spec.image_size},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    processor = Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=GEMMA_CHAT_TEMPLATE,
        image_seq_length=tokens_per_image,
    )
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in GEMMA_SPECIALS}
    head_dim = spec.text_hidden // spec.text_heads
    text = {
        **llm_config(spec, tokenizer),
        "head_dim": head_dim,
        "query_pre_attn_scalar": head_dim,
        "sliding_window": spec.sliding_window,
        # The released models' 5 sliding-window layers per global one, counted from the last layer so that even a
        # 2-layer model has one of each.
        "layer_types": [
            "full_attention" if (spec.text_layers - 1 - i) % 6 == 0 else "sliding_attention"
            for i in range(spec.text_layers)
        ],
    }
    vision = SiglipVisionConfig(**vit_config(spec, spec.image_size), vision_use_head=False)
    config = Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=tokens_per_image,
        boi_token_index=ids["<start_of_image>"],
        eoi_token_index=ids["<end_of_image>"],
        image_token_index=ids["<image_soft_token>"],
        # The released models tie the LM head to the embeddings; a random 2-layer model tied so only repeats its last
        # token (its residual stream stays close to that token's embedding), whatever the image.
        tie_word_embeddings=False,
    )

    def init_projector(model: Gemma3ForConditionalGeneration) -> None:
        # transformers starts the projector at zero (the released one is trained), which would blank every image
        # token; unit-scale outputs instead, like the text embeddings'.
        torch.nn.init.normal_(
            model.model.multi_modal_projector.mm_input_projection_weight, std=spec.vision_hidden**-0.5
        )

    model = seeded_model(Gemma3ForConditionalGeneration, config, tokenizer, spec.seed, init=init_projector)
    model.generation_config.eos_token_id = [ids["<eos>"], ids["<end_of_turn>"]]  # as the released IT models
    return model, processor


def ensure_tiny_gemma3(cache_dir: str | Path, **sizes) -> str:
    """Return a local HF checkpoint dir of the tiny Gemma 3 for these sizes, building and saving it on first use."""
    return save_once(Path(cache_dir) / "tiny_gemma3", TinyGemma3Spec(**sizes), build_tiny_gemma3)
