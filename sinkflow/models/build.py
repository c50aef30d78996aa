"""Load a model + processor (hub id, local HF dir, or the offline tiny model), freeze, and attach LoRA."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import AutoModelForImageTextToText, AutoProcessor

from sinkflow.checks import choice, number
from sinkflow.config import LORA_NUMBERS
from sinkflow.models.families.base import VisualFamily

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoraSpec:
    """LoRA hyper-parameters; `target_modules` are leaf names, anchored to the family's language model."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

    def __post_init__(self):
        for name, bounds in LORA_NUMBERS.items():
            number(f"model.lora.{name}", getattr(self, name), **bounds)


def lora_target_regex(family: VisualFamily, names) -> str:
    """A regex peft full-matches against module names: only `names` inside the language model.

    Anchoring matters: CLIP / SigLIP attention also has `q_proj`/`k_proj`/`v_proj`, and suffix targets would
    silently put LoRA on the vision tower (LLaVA #1647).
    """
    leaves = "|".join(re.escape(n) for n in names)
    return rf"{family.language_model_prefix()}(.*\.)?({leaves})"


def resolve_checkpoint(model_cfg: DictConfig) -> str:
    """The model's source: a hub id / directory, or the path a builder (e.g. the tiny model) returns."""
    source = model_cfg.checkpoint
    return str(instantiate(source)) if isinstance(source, DictConfig) else str(source)


def load_pretrained(
    source: str | Path,
    *,
    family: VisualFamily | None = None,
    dtype: str = "float32",
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
):
    """Load an image-text-to-text model and its processor (the family's way) from a hub id or a local directory."""
    choice("model.dtype", dtype, DTYPES)
    local = local_directory(str(source))
    source = local or str(source)
    kwargs = {"dtype": DTYPES[dtype], "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        processor = (
            family.load_processor(source, trust_remote_code)
            if family is not None
            else AutoProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)
        )
        model = AutoModelForImageTextToText.from_pretrained(source, **kwargs)
    except OSError as err:
        if local:
            raise OSError(f"could not load model.checkpoint={source}: {err}") from err
        raise OSError(
            f"could not load model.checkpoint={source!r}: not a local HF directory and not in the hub cache "
            f"(offline runs need the weights downloaded beforehand, e.g. `hf download {source}`)\n{err}"
        ) from err
    return model, processor


def local_directory(source: str) -> str | None:
    """`source` as a local HF model directory (`~` expanded), or None for a hub id; a path that is not one fails
    here, before anything tries to load it (a hub id is `name` or `org/name`: no leading `.`, `~` or `/`)."""
    path = Path(source).expanduser()
    text = source.replace(os.sep, "/")
    looks_like_path = path.is_absolute() or text.startswith((".", "~")) or text.endswith("/") or text.count("/") > 1
    if not path.exists():
        if looks_like_path:
            raise FileNotFoundError(f"model.checkpoint={source}: no such directory")
        return None
    if not path.is_dir():
        raise NotADirectoryError(
            f"model.checkpoint={source}: not a directory (expected a Hugging Face model "
            "directory, as save_pretrained writes it)"
        )
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"model.checkpoint={source}: the directory has no config.json (expected a Hugging "
            "Face model directory, as save_pretrained writes it)"
        )
    return str(path)


def prepare_for_training(
    model: nn.Module,
    family: VisualFamily,
    *,
    freeze_vision: bool = True,
    train_projector: bool = True,
    lora: LoraSpec | dict | None = None,
    train_language_model: bool = False,
    adapter: str | Path | None = None,
    gradient_checkpointing: bool = False,
) -> nn.Module:
    """Freeze the ViT, keep the projector trainable, put LoRA on the language model only.

    `train_language_model` is full fine-tuning instead of LoRA (TinyLLaVA-Factory's recipe): every weight of the
    language model and its LM head trains. `adapter` is an earlier run's peft adapter to start from: it keeps
    training when `lora` is given (and must match it), else it is applied frozen. `gradient_checkpointing`
    recomputes every LLM and ViT layer in the backward pass instead of keeping its activations (transformers'
    non-reentrant activation checkpointing, which needs no input-grad hook for LoRA; a frozen ViT runs without
    autograd, so only a trained one recomputes).

    Returns the model to train, in train mode (from_pretrained leaves it in eval mode, which would silence LoRA
    dropout): a `PeftModel` when LoRA is on (the HF model is modified in place either way).
    """
    if isinstance(lora, dict):
        lora = LoraSpec(**lora)
    if lora is not None and train_language_model:
        raise ValueError("model.train_language_model=true fine-tunes the whole LLM: set model.lora=null with it")
    model.requires_grad_(False)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter, is_trainable=lora is not None)
        if lora is not None:
            check_adapter(model.peft_config["default"], lora, family, adapter)
    elif lora is not None:
        config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora_target_regex(family, lora.target_modules),
            bias="none",
        )
        model = get_peft_model(model, config)
    base = unwrap(model)
    # Tower first: a family's projector may sit inside its vision tower (Qwen's patch merger).
    family.vision_tower(base).requires_grad_(not freeze_vision)
    family.projector(base).requires_grad_(train_projector)
    if train_language_model:
        prefix = re.compile(family.language_model_prefix())
        for name, parameter in base.named_parameters():
            if prefix.match(name):
                parameter.requires_grad_(True)
        base.get_output_embeddings().requires_grad_(True)
    if gradient_checkpointing:
        base.activation_checkpointing_enable()
    model.train()
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    log.info("trainable parameters: %d / %d (%.2f%%)", n_train, n_all, 100 * n_train / max(n_all, 1))
    return model


def check_adapter(config: LoraConfig, lora: LoraSpec, family: VisualFamily, adapter: str | Path) -> None:
    """An adapter that keeps training must be the one `model.lora` describes."""
    expected = {"r": lora.r, "lora_alpha": lora.alpha, "target_modules": lora_target_regex(family, lora.target_modules)}
    differ = {key: (getattr(config, key), value) for key, value in expected.items() if getattr(config, key) != value}
    if differ:
        raise ValueError(
            f"init_from adapter {adapter} does not match model.lora: "
            + ", ".join(f"{key} is {have!r} there, {want!r} here" for key, (have, want) in differ.items())
            + " (set model.lora to match, or model.lora=null to apply it frozen)"
        )


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The LLM's decoder layers (LLaVA: Llama's, Qwen-VL: Qwen2's)."""
    return unwrap(model).get_decoder().layers


def unwrap(model: nn.Module) -> nn.Module:
    """The HF model inside a `PeftModel` (LoRA layers stay injected), or the model itself."""
    return model.get_base_model() if isinstance(model, PeftModel) else model
