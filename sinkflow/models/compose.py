"""Compose a LLaVA-architecture model from a pretrained ViT and a pretrained causal LM, TinyLLaVA-Factory style.

TinyLLaVA (e.g. SigLIP-so400m + Qwen2-0.5B, the paper's small DIYSink model, docs/models.md#tinyllava) has no HF
checkpoint of its own here: it is the pretrained ViT and LLM joined by a freshly initialised 2-layer GELU
connector. That is an HF `LlavaForConditionalGeneration` + `LlavaProcessor`, built and saved once in HF format so
that it loads through the same `from_pretrained` path as any checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPVisionModel,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    SiglipVisionModel,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
from transformers.utils import cached_file

from sinkflow.checks import choice
from sinkflow.models.families.llava import FeatureSelect
from sinkflow.models.tiny import VICUNA_CHAT_TEMPLATE, TinyLlavaSpec, save_once

# model_type of a vision checkpoint (the whole contrastive model or its vision half) -> the vision model class.
VISION_MODELS = {
    "siglip": SiglipVisionModel,
    "siglip_vision_model": SiglipVisionModel,
    "clip": CLIPVisionModel,
    "clip_vision_model": CLIPVisionModel,
}
# Tokens the ViT emits besides its patches: CLIP's CLS; SigLIP has none.
EXTRA_TOKENS = {SiglipVisionModel: 0, CLIPVisionModel: 1}
# LLaVA / TinyLLaVA connector names -> the activation of HF's LlavaMultiModalProjector (Linear -> act -> Linear).
PROJECTORS = {"mlp2x_gelu": "gelu"}


@dataclass(frozen=True)
class ComposedLlavaSpec:
    """What a composed checkpoint is built from; local sources are absolute paths, hub sources ids."""

    vision: str
    language: str
    projector: str = "mlp2x_gelu"
    vision_feature_layer: int | tuple[int, ...] = -2
    vision_feature_select_strategy: FeatureSelect = "default"
    image_token: str = "<image>"
    chat_template: str = VICUNA_CHAT_TEMPLATE
    seed: int = 0
    revision: int = 1  # bump when the build code changes, so cached checkpoints are rebuilt

    fingerprint = TinyLlavaSpec.fingerprint  # the same short hash of the fields names the cache folder


def compose_llava(
    cache_dir: str | Path,
    vision: str,
    language: str,
    projector: str = "mlp2x_gelu",
    vision_feature_layer: int | list[int] = -2,
    vision_feature_select_strategy: str = "default",
    image_token: str = "<image>",
    chat_template: str = VICUNA_CHAT_TEMPLATE,
    seed: int = 0,
) -> str:
    """A local HF checkpoint dir of `vision` + `language` as a LLaVA, built and saved on first use.

    The cache is keyed by the arguments, not by the weights: delete the directory to rebuild after the sources
    changed. The default chat template is Vicuna-style with the LM's eos ending each answer, which is
    TinyLLaVA-Factory's `qwen2_base` for Qwen2 base models (eos `<|endoftext|>`).
    """
    layer = vision_feature_layer if isinstance(vision_feature_layer, int) else tuple(vision_feature_layer)
    spec = ComposedLlavaSpec(
        _source_id(vision),
        _source_id(language),
        projector,
        layer,
        vision_feature_select_strategy,
        image_token,
        chat_template,
        seed,
    )
    name = f"llava-{Path(spec.vision).name}-{Path(spec.language).name}"
    return save_once(Path(cache_dir) / name, spec, build_composed_llava)


def build_composed_llava(spec: ComposedLlavaSpec) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """The LLaVA in memory: pretrained ViT and LM weights, a projector freshly initialised (seeded by `spec.seed`)."""
    # HF's LlavaMultiModalProjector is Linear-act-Linear: only two-layer MLPs map onto it.
    choice("model.checkpoint.projector", spec.projector, PROJECTORS)
    choice("model.checkpoint.vision_feature_select_strategy", spec.vision_feature_select_strategy, FeatureSelect)
    vision_type = _config(spec.vision, "vision").model_type
    if vision_type not in VISION_MODELS:
        raise ValueError(
            f"vision checkpoint {spec.vision!r} is a {vision_type!r} model; compose_llava takes a "
            f"SigLIP or CLIP checkpoint (model_type one of {sorted(VISION_MODELS)})"
        )
    vision_class = VISION_MODELS[vision_type]
    vision = _load(vision_class, spec.vision, "vision")
    language_type = _config(spec.language, "language").model_type
    if language_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ValueError(f"language checkpoint {spec.language!r} is a {language_type!r} model, not a causal LM")
    language = _load(AutoModelForCausalLM, spec.language, "language")
    tokenizer = _tokenizer(spec.language, spec.image_token, language.config.vocab_size)

    # "default" drops the first ViT token whatever it is, as transformers' LlavaModel.get_image_features and
    # TinyLLaVA-Factory do: for SigLIP (no CLS) that is a patch (so400m-384: 729 -> 728 tokens). The processor
    # counts the same way, so placeholders and features always agree.
    extra = EXTRA_TOKENS[vision_class]
    processor = LlavaProcessor(
        image_processor=_image_processor(spec.vision),
        tokenizer=tokenizer,
        patch_size=vision.config.patch_size,
        vision_feature_select_strategy=spec.vision_feature_select_strategy,
        num_additional_image_tokens=extra,
        image_token=spec.image_token,
        chat_template=spec.chat_template,
    )
    n_tokens = (
        (vision.config.image_size // vision.config.patch_size) ** 2
        + extra
        - (spec.vision_feature_select_strategy == "default")
    )
    layer = spec.vision_feature_layer if isinstance(spec.vision_feature_layer, int) else list(spec.vision_feature_layer)
    config = LlavaConfig(
        vision_config=vision.config,
        text_config=language.config,
        image_token_id=tokenizer.convert_tokens_to_ids(spec.image_token),
        image_seq_length=n_tokens,
        vision_feature_layer=layer,
        vision_feature_select_strategy=spec.vision_feature_select_strategy,
        projector_hidden_act=PROJECTORS[spec.projector],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = LlavaForConditionalGeneration(config)
    model.model.vision_tower.load_state_dict(vision.state_dict())
    model.model.language_model.load_state_dict(language.get_decoder().state_dict())
    model.lm_head.load_state_dict(language.get_output_embeddings().state_dict())
    # Qwen pads its embedding past the tokenizer, so the new token may already have a row: only ever grow.
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.eval(), processor


def _source_id(source: str) -> str:
    """An existing local directory as its absolute path (so the cache key does not depend on the cwd), else as is."""
    path = Path(source).expanduser()
    return str(path.resolve()) if path.is_dir() else str(source)


def _unreachable(source: str, role: str, err: Exception) -> OSError:
    return OSError(
        f"could not load the {role} checkpoint {source!r}: not a local HF directory and not in the hub "
        f"cache (offline runs need it downloaded beforehand, e.g. `hf download {source}`)\n{err}"
    )


def _config(source: str, role: str):
    try:
        return AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise _unreachable(source, role, err) from err


def _load(model_class, source: str, role: str):
    """`model_class` from `source` in float32; every weight of the class must come from the checkpoint."""
    try:
        model, info = model_class.from_pretrained(source, dtype=torch.float32, output_loading_info=True)
    except OSError as err:
        raise _unreachable(source, role, err) from err
    if info["missing_keys"]:
        raise ValueError(
            f"the {role} checkpoint {source!r} lacks weights of {model_class.__name__}: "
            f"{sorted(info['missing_keys'])[:5]}"
        )
    return model


def _has_file(source: str, name: str) -> bool:
    return cached_file(source, name, _raise_exceptions_for_missing_entries=False) is not None


def _tokenizer(source: str, image_token: str, vocab_size: int):
    """The LM's tokenizer with `image_token` added as a special token (and a pad token, which batching needs)."""
    # Without tokenizer files AutoTokenizer builds an empty tokenizer instead of failing.
    if not _has_file(source, "tokenizer_config.json"):
        raise ValueError(f"the language checkpoint {source!r} has no tokenizer (tokenizer_config.json)")
    tokenizer = AutoTokenizer.from_pretrained(source)
    if len(tokenizer) > vocab_size:
        raise ValueError(
            f"the tokenizer of {source!r} has {len(tokenizer)} tokens but the LM only {vocab_size} "
            "embeddings: tokenizer and weights do not belong together"
        )
    tokenizer.add_special_tokens({"extra_special_tokens": [image_token]}, replace_extra_special_tokens=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


def _image_processor(source: str):
    if not _has_file(source, "preprocessor_config.json"):
        raise ValueError(f"the vision checkpoint {source!r} has no image processor (preprocessor_config.json)")
    return AutoImageProcessor.from_pretrained(source)
