"""The released architectures at full size (sinkflow.models.full_size): built on the meta device, they hold the
released checkpoints' parameter counts exactly, and their processors give the released number of visual tokens."""

import pytest
import torch

from sinkflow.data.collate import Collator
from sinkflow.models.families.base import FAMILIES
from sinkflow.models.full_size import FULL_SIZES, build_full_size


@pytest.mark.parametrize(
    ("name", "total", "llm"),
    [
        # llava-hf/llava-1.5-7b-hf: Llama-2-7B (6,738,415,616) with its vocabulary padded to 32,064
        ("llava-1.5-7b", 7_063_427_072, 6_738_939_904),
        # Qwen/Qwen2.5-VL-7B-Instruct: Qwen2.5-7B's LLM
        ("qwen2.5-vl-7b", 8_292_166_656, 7_615_616_512),
    ],
)
def test_full_size_models_hold_the_released_parameter_counts(name, total, llm):
    model, _ = build_full_size(name)
    assert sum(p.numel() for p in model.parameters()) == total
    assert sum(p.numel() for p in model.get_decoder().parameters()) + model.lm_head.weight.numel() == llm
    assert {(p.device.type, p.dtype) for p in model.parameters()} == {("meta", torch.bfloat16)}


@pytest.mark.parametrize(("name", "size", "tokens"), [("llava-1.5-7b", 500, 576), ("qwen2.5-vl-7b", 448, 256)])
def test_full_size_processors_give_the_released_visual_tokens(name, size, tokens, tmp_path):
    """LLaVA-1.5: 336 px crops in 14 px patches, 24 x 24 tokens whatever the image; Qwen2.5-VL: 14 px patches
    merged 2 x 2, (448 / 28)^2 tokens for a 448 px image."""
    from PIL import Image

    Image.new("RGB", (size, size), "red").save(tmp_path / "image.png")
    family = FULL_SIZES[name][0]
    model, processor = build_full_size(name)
    sample = {
        "id": "0",
        "image": str(tmp_path / "image.png"),
        "conversations": [{"from": "human", "value": "<image>\nQ"}],
    }
    batch = Collator(processor, FAMILIES[family].default_template(), generate=True)([sample])
    assert int((batch["input_ids"] == FAMILIES[family]().image_token_id(model)).sum()) == tokens
