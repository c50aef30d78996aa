"""Offline tiny LLaVA: tokenizer, image processor, processor and model built from configs, saved in HF format.

The tiny model is a real `LlavaForConditionalGeneration` (CLIP ViT + Llama) with random weights; it is saved with
`save_pretrained` once per configuration so that every later load goes through the same `from_pretrained` path a
real checkpoint uses.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from sinkflow.data.templates import VICUNA_V1_SYSTEM

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]

# A Vicuna-style chat template so the tiny processor also exercises `apply_chat_template`.
VICUNA_CHAT_TEMPLATE = (
    '{{ "' + VICUNA_V1_SYSTEM + ' " }}'
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ 'USER: ' }}{% else %}{{ 'ASSISTANT: ' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}{{ '<image>\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ ' ' }}{% else %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# Text the byte-level BPE is trained on: the template, the shapes vocabulary and the benchmark prompts, so that
# common words become single tokens. Any other text still tokenizes (byte fallback of byte-level BPE).
_CORPUS = [
    VICUNA_V1_SYSTEM,
    "USER: ASSISTANT: <image>\n",
    "What is the background color? What is the dominant color of the shapes? How many shapes are there?",
    "Is there a red green blue yellow purple orange circle square triangle star diamond in the image?",
    "Is the shape on the left or the right of the image? left right top bottom Yes No yes no",
    "white black gray beige pink brown cyan 0 1 2 3 4 5 6 7 8 9",
    "Answer the question using a single word or phrase. Please answer yes or no.",
    "Answer with the option's letter from the given choices directly. Options: A: B: C: D:",
]
# Words of the shapes captions and of cot_route's routing prompts, learned as well by a vocabulary of 1024 or more (the
# tiny base's): each then takes a token or two. Smaller vocabularies keep the tokens the tiny models always had.
_LARGE_CORPUS = [
    "Describe the image briefly. A An background with at the top middle bottom left center right and",
    "Is this image a symbolic diagram or a real-world photo? Answer 'symbolic' or 'real-world'.",
    "Question: Does answering it need global or local understanding? Answer 'global' or 'local'.",
]
LARGE_VOCABULARY = 1024


@dataclass(frozen=True)
class TinyLlavaSpec:
    """Sizes of the tiny LLaVA (vision: CLIP ViT, language: Llama)."""

    image_size: int = 64
    patch_size: int = 16
    vision_hidden: int = 64
    vision_layers: int = 3
    vision_heads: int = 4
    text_hidden: int = 128
    text_layers: int = 2
    text_heads: int = 4
    text_kv_heads: int = 2
    vocab_size: int = 512
    seed: int = 0
    revision: int = 3  # bump when the build code changes, so cached checkpoints are rebuilt

    def fingerprint(self) -> str:
        """Short hash naming the cache folder of this spec."""
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


def build_tokenizer(
    vocab_size: int,
    *,
    specials: list[str] = SPECIAL_TOKENS,
    bos: str | None = "<s>",
    eos: str = "</s>",
    pad: str = "<pad>",
    unk: str | None = "<unk>",
    extra_special_tokens: dict[str, str] | None = None,
    chat_template: str = VICUNA_CHAT_TEMPLATE,
) -> PreTrainedTokenizerFast:
    """Train a deterministic byte-level BPE tokenizer offline and wrap it for transformers.

    With a `bos` token every encoding starts with it (Llama style); without one nothing is added (Qwen style).
    """
    tok = Tokenizer(models.BPE(unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS + (_LARGE_CORPUS if vocab_size >= LARGE_VOCABULARY else []), trainer=trainer)
    post = [processors.ByteLevel(trim_offsets=False)]
    if bos is not None:
        bos_id = tok.token_to_id(bos)
        post.append(
            processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)])
        )
    tok.post_processor = processors.Sequence(post)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        unk_token=unk,
        pad_token=pad,
        extra_special_tokens=extra_special_tokens or {"image_token": "<image>"},
        padding_side="right",
        chat_template=chat_template,
    )


def build_chatml_tokenizer(
    vocab_size: int, specials: list[str], extra_special_tokens: dict[str, str], chat_template: str
) -> PreTrainedTokenizerFast:
    """A tokenizer with Qwen2's conventions (the LLM of Qwen-VL, InternVL3 and LLaVA-OneVision): no bos,
    `<|im_end|>` ends a turn, `<|endoftext|>` pads."""
    return build_tokenizer(
        vocab_size,
        specials=specials,
        bos=None,
        eos="<|im_end|>",
        pad="<|endoftext|>",
        unk=None,
        extra_special_tokens=extra_special_tokens,
        chat_template=chat_template,
    )


def llm_config(spec: TinyLlavaSpec, tokenizer: PreTrainedTokenizerFast) -> dict:
    """The tiny language model's config entries every family shares: its sizes, the tokenizer's vocabulary and its
    pad / bos / eos ids."""
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": spec.text_hidden,
        "intermediate_size": 4 * spec.text_hidden,
        "num_hidden_layers": spec.text_layers,
        "num_attention_heads": spec.text_heads,
        "num_key_value_heads": spec.text_kv_heads,
        "max_position_embeddings": 1024,
        # HF's 0.02 suits 4096-wide models; at width 128 it leaves a frozen random LM head unable to express a
        # confident prediction, so LoRA could not fit anything. 1/sqrt(width) restores the usual scale.
        "initializer_range": spec.text_hidden**-0.5,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }


def vit_config(spec: TinyLlavaSpec, image_size: int) -> dict:
    """The tiny ViT's sizes, in the config names CLIP, SigLIP and InternViT share, for `image_size` px inputs."""
    return {
        "hidden_size": spec.vision_hidden,
        "intermediate_size": 4 * spec.vision_hidden,
        "num_hidden_layers": spec.vision_layers,
        "num_attention_heads": spec.vision_heads,
        "image_size": image_size,
        "patch_size": spec.patch_size,
    }


def seeded_model(model_cls, config, tokenizer: PreTrainedTokenizerFast, seed: int, init=None):
    """`model_cls(config)` in eval mode with random weights drawn from `seed` (the global RNG is left as it was),
    then `init(model)` under the same seed; generation pads and stops with the tokenizer's pad and eos tokens."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
        if init is not None:
            init(model)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.eval()


def build_tiny_llava(spec: TinyLlavaSpec) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """Build the tiny model and its processor in memory (random weights seeded by `spec.seed`)."""
    tokenizer = build_tokenizer(spec.vocab_size)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": spec.image_size},
        crop_size={"height": spec.image_size, "width": spec.image_size},
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=spec.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=VICUNA_CHAT_TEMPLATE,
    )
    vision = CLIPVisionConfig(**vit_config(spec, spec.image_size), projection_dim=spec.vision_hidden)
    text = LlamaConfig(**llm_config(spec, tokenizer))
    n_tokens = (spec.image_size // spec.patch_size) ** 2
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=n_tokens,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return seeded_model(LlavaForConditionalGeneration, config, tokenizer, spec.seed), processor


def ensure_tiny_llava(cache_dir: str | Path, **sizes) -> str:
    """Return a local HF checkpoint dir of the tiny LLaVA for these sizes, building and saving it on first use."""
    return save_once(Path(cache_dir) / "tiny_llava", TinyLlavaSpec(**sizes), build_tiny_llava)


def save_once(prefix: Path, spec, build) -> str:
    """`<prefix>-<spec fingerprint>`: an HF checkpoint directory of `build(spec)`, saved on first use."""
    target = prefix.with_name(f"{prefix.name}-{spec.fingerprint()}")
    if (target / "spec.json").exists():
        return str(target)
    model, processor = build(spec)
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")  # its own: parallel jobs may build at once
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    processor.save_pretrained(partial)
    (partial / "spec.json").write_text(json.dumps(asdict(spec), indent=2))
    # Rename last so that concurrent or interrupted builds never leave a half-written checkpoint behind.
    try:
        partial.rename(target)
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)
    return str(target)
