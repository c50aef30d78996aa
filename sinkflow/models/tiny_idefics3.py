"""Offline tiny Idefics3 / SmolVLM: tokenizer, image-splitting processor and model built from configs, saved in HF
format.

A real `Idefics3ForConditionalGeneration` / `SmolVLMForConditionalGeneration` (SigLIP + pixel shuffle + Linear +
Llama) with random weights, saved once and loaded back through `from_pretrained`. The checkpoints' chat layout and
image tokens are reproduced (`<fake_token_around_image>`, `<row_i_col_j>`, `<global-img>`, `<image>`); an image's
longest side is resized to 64 px and split into 32-px crops plus a 32-px global view, each 4 x 4 patches of 8 px
folded 2 x 2 into 4 LLM tokens: a 64 px square image is 2 x 2 crops + the global view = 20 tokens in 5 runs, a
64 x 24 one 1 x 2 crops + the global view = 12 tokens in 3 runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transformers import (
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessorPil,
    Idefics3Processor,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
    SmolVLMImageProcessorPil,
)

from sinkflow.checks import choice
from sinkflow.models.tiled_processors import split_images
from sinkflow.models.tiny import TinyLlavaSpec, build_tokenizer, llm_config, save_once, seeded_model, vit_config

# Idefics3 and SmolVLM tokenizers: their image markup, and <end_of_utterance> ending every turn.
SPLIT_IMAGE_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<end_of_utterance>",
    "<fake_token_around_image>",
    "<image>",
    "<global-img>",
    *(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)),
]
# The checkpoints' template: `User:<image>question<end_of_utterance>\nAssistant: answer<end_of_utterance>\n` (SmolVLM2
# opens with <|im_start|>; Idefics3-8B with Llama 3's <|begin_of_text|>, left out here).
SPLIT_IMAGE_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
VARIANTS = {
    "idefics3": (Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessorPil),
    "smolvlm": (SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMImageProcessorPil),
}


@dataclass(frozen=True)
class TinyIdefics3Spec(TinyLlavaSpec):
    """Sizes of a tiny Idefics3 / SmolVLM (`variant`): images resized to `longest_edge` px on their longest side, cut
    into `crop` px crops of `patch_size` px patches, `scale` x `scale` patches folded into one token."""

    variant: str = "idefics3"
    longest_edge: int = 64
    crop: int = 32
    patch_size: int = 8
    scale: int = 2
    revision: int = 1


def build_tiny_idefics3(spec: TinyIdefics3Spec):
    """Build the tiny model and its processor in memory (random weights seeded by `spec.seed`)."""
    choice("model.checkpoint.variant", spec.variant, VARIANTS)
    tokenizer = build_tokenizer(
        spec.vocab_size,
        specials=SPLIT_IMAGE_SPECIALS,
        bos=None,
        eos="<end_of_utterance>",
        pad="<|endoftext|>",
        unk=None,
        extra_special_tokens={"image_token": "<image>"},
        chat_template=SPLIT_IMAGE_CHAT_TEMPLATE,
    )
    config_cls, model_cls, image_processor_cls = VARIANTS[spec.variant]
    image_processor = image_processor_cls(
        size={"longest_edge": spec.longest_edge}, max_image_size={"longest_edge": spec.crop}
    )
    tokens_per_crop = (spec.crop // spec.patch_size // spec.scale) ** 2
    text = {"model_type": "llama", **llm_config(spec, tokenizer), "tie_word_embeddings": False}
    vision = vit_config(spec, spec.crop)
    config = config_cls(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=spec.scale,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = seeded_model(model_cls, config, tokenizer, spec.seed)
    processor = Idefics3Processor(
        split_images(image_processor), tokenizer, image_seq_len=tokens_per_crop, chat_template=SPLIT_IMAGE_CHAT_TEMPLATE
    )
    return model, processor


def ensure_tiny_idefics3(cache_dir: str | Path, **sizes) -> str:
    """Return a local HF checkpoint dir of the tiny Idefics3 / SmolVLM for these sizes, building it on first use."""
    spec = TinyIdefics3Spec(**sizes)
    return save_once(Path(cache_dir) / f"tiny_{spec.variant}", spec, build_tiny_idefics3)
