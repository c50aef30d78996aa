"""Offline tiny LLaVA-NeXT / LLaVA-OneVision: AnyRes tiling at toy size, built from configs, saved in HF format.

Real `LlavaNextForConditionalGeneration` (CLIP ViT + Mistral) and `LlavaOnevisionForConditionalGeneration` (SigLIP
ViT + Qwen2) models with random weights, saved once and always loaded back through `from_pretrained`. The ViT sees
`image_size / 2`-px tiles of 4 x 4 patches; the grid pinpoints are 1 x 1, 1 x 2, 2 x 1 and 2 x 2 tiles, so a square
`image_size` image is cut into 4 tiles (8 x 8 patches, 8 newlines) and a 3:2 one into 2 (4 x 6 patches once the
padding is cut off, 4 newlines), each after its 16-patch base view: 88 and 44 image tokens at 64 px.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transformers import (
    CLIPVisionConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextProcessor,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    MistralConfig,
    Qwen2Config,
    SiglipVisionConfig,
)
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
from transformers.models.llava_onevision.image_processing_pil_llava_onevision import LlavaOnevisionImageProcessorPil

from sinkflow.checks import choice
from sinkflow.models.onevision_processor import OnevisionProcessor
from sinkflow.models.tiny import (
    TinyLlavaSpec,
    build_chatml_tokenizer,
    build_tokenizer,
    llm_config,
    save_once,
    seeded_model,
    vit_config,
)

# llava-v1.6-mistral's layout: `[INST] <image>\nQ [/INST] A</s>` (the tokenizer adds <s>).
MISTRAL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' }}{% else %}{{ ' ' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>\n' }}{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ ' [/INST]' }}{% else %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
)
ONEVISION_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]
# The checkpoints' ChatML layout (a turn's images first, then its text), written prefix-stable: a turn's header is the
# generation prompt's.
ONEVISION_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] | selectattr('type', 'equalto', 'image') %}<image>\n{% endfor %}"
    "{% for part in message['content'] | selectattr('type', 'equalto', 'text') %}{{ part['text'] }}{% endfor %}"
    "{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
VARIANTS = ("llava_next", "llava_onevision")


@dataclass(frozen=True)
class TinyAnyResSpec(TinyLlavaSpec):
    """Sizes of a tiny AnyRes model; `variant` is llava_next or llava_onevision. `image_size` is the side of the
    largest grid (2 x 2 tiles of `image_size / 2` px, each 4 x 4 patches of `image_size / 8` px)."""

    variant: str = "llava_next"
    patch_size: int = 8
    vision_aspect_ratio: str = "anyres_max_9"  # OneVision: more unpadded patches than 9 tiles' are interpolated
    revision: int = 1

    @property
    def tile(self) -> int:
        return self.image_size // 2


def build_tiny_anyres(spec: TinyAnyResSpec):
    """Build the tiny model and its processor in memory (random weights seeded by `spec.seed`)."""
    choice("model.checkpoint.variant", spec.variant, VARIANTS)
    if spec.image_size != 8 * spec.patch_size:
        raise ValueError(
            f"model.checkpoint.image_size={spec.image_size} must be 8 x model.checkpoint.patch_size "
            f"({spec.patch_size}): a tile is half the image and 4 x 4 patches"
        )
    pinpoints = [[spec.tile * rows, spec.tile * cols] for rows, cols in ((1, 1), (1, 2), (2, 1), (2, 2))]
    vision = vit_config(spec, spec.tile)
    if spec.variant == "llava_next":
        tokenizer = build_tokenizer(spec.vocab_size, chat_template=MISTRAL_CHAT_TEMPLATE)
        ids = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
        image_processor = LlavaNextImageProcessorPil(
            size={"shortest_edge": spec.tile},
            crop_size={"height": spec.tile, "width": spec.tile},
            image_grid_pinpoints=pinpoints,
        )
        processor = LlavaNextProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            patch_size=spec.patch_size,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,  # CLIP's CLS
            chat_template=MISTRAL_CHAT_TEMPLATE,
        )
        config = LlavaNextConfig(
            vision_config=CLIPVisionConfig(**vision, projection_dim=spec.vision_hidden),
            text_config=MistralConfig(**llm_config(spec, tokenizer), sliding_window=None),
            image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
            image_grid_pinpoints=pinpoints,
            image_seq_length=(spec.tile // spec.patch_size) ** 2,
            **ids,
        )
        model_cls = LlavaNextForConditionalGeneration
    else:
        tokenizer = build_chatml_tokenizer(
            spec.vocab_size,
            ONEVISION_SPECIALS,
            {"image_token": "<image>", "video_token": "<video>"},
            ONEVISION_CHAT_TEMPLATE,
        )
        ids = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
        image_processor = LlavaOnevisionImageProcessorPil(
            size={"height": spec.tile, "width": spec.tile}, image_grid_pinpoints=pinpoints
        )
        processor = OnevisionProcessor(
            tokenizer,
            image_processor,
            num_image_tokens=(spec.tile // spec.patch_size) ** 2,
            vision_feature_select_strategy="full",
            vision_aspect_ratio=spec.vision_aspect_ratio,
        )
        config = LlavaOnevisionConfig(
            vision_config=SiglipVisionConfig(**vision, vision_use_head=False),
            text_config=Qwen2Config(**llm_config(spec, tokenizer)),
            image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
            video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
            image_grid_pinpoints=pinpoints,
            vision_aspect_ratio=spec.vision_aspect_ratio,
            **ids,
        )
        model_cls = LlavaOnevisionForConditionalGeneration
    return seeded_model(model_cls, config, tokenizer, spec.seed), processor


def ensure_tiny_anyres(cache_dir: str | Path, **sizes) -> str:
    """Return a local HF checkpoint dir of the tiny AnyRes model for these sizes, building and saving it on first
    use."""
    spec = TinyAnyResSpec(**sizes)
    return save_once(Path(cache_dir) / f"tiny_{spec.variant}", spec, build_tiny_anyres)
