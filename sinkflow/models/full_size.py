"""Released architectures at their full size with random weights: GPU figures (time, memory, MFU) where the
checkpoints cannot be downloaded, and memory planning on the meta device.

The sizes are the released checkpoints' (`config.json` of llava-hf/llava-1.5-7b-hf and Qwen/Qwen2.5-VL-7B-Instruct);
the token ids, chat template and processor are the family's tiny model's, with the released patch geometry, so the
whole sinkflow pathway runs on them unchanged. Nothing here is a trained model: only shapes and costs are real.
"""

from __future__ import annotations

import torch
from torch import nn

from sinkflow.checks import choice
from sinkflow.models.families.base import FAMILIES

# name -> (family, the tiny model's geometry, the released text config's sizes, the released vision config's sizes)
FULL_SIZES: dict[str, tuple[str, dict, dict, dict]] = {
    "llava-1.5-7b": (
        "llava",
        {"image_size": 336, "patch_size": 14},
        {
            "hidden_size": 4096,
            "intermediate_size": 11008,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 32,
            "vocab_size": 32064,
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-5,
        },
        {
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "image_size": 336,
            "patch_size": 14,
            "projection_dim": 768,
        },
    ),
    "qwen2.5-vl-7b": (
        "qwen2_5_vl",
        {"patch_size": 14, "min_pixels": 56 * 56, "max_pixels": 1280 * 28 * 28},
        {
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "vocab_size": 152064,
            "max_position_embeddings": 128000,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
        },
        {
            "depth": 32,
            "hidden_size": 1280,
            "intermediate_size": 3420,
            "num_heads": 16,
            "out_hidden_size": 3584,
            "patch_size": 14,
            "window_size": 112,
            "fullatt_block_indexes": [7, 15, 23, 31],
        },
    ),
}


def build_full_size(
    name: str, device: str | torch.device = "meta", dtype: torch.dtype = torch.bfloat16
) -> tuple[nn.Module, object]:
    """(model, processor) of the released architecture `name` (a key of FULL_SIZES) with random weights, built
    directly on `device` in `dtype` (on "meta": no memory, for counting)."""
    choice("full-size model", name, list(FULL_SIZES))
    family_name, geometry, text_sizes, vision_sizes = FULL_SIZES[name]
    tiny, processor = FAMILIES[family_name].build_tiny(**geometry)
    config = tiny.config.to_dict()
    # entries the tiny config derived from its own sizes are derived again from the released ones
    derived = ("head_dim", "layer_types")
    config["text_config"] = {**{k: v for k, v in config["text_config"].items() if k not in derived}, **text_sizes}
    config["vision_config"] = {**config["vision_config"], **vision_sizes}
    config = type(tiny.config).from_dict(config)
    with torch.device(device):
        model = type(tiny)._from_config(config, dtype=dtype)
    model.generation_config = tiny.generation_config
    return model.eval(), processor
