"""A processor made of a tokenizer and an image processor, for checkpoints whose HF processor cannot load here.

transformers' `Qwen2VLProcessor` / `Qwen2_5_VLProcessor` also build a video processor, which needs torchvision;
the CPU stack pinned here has none (docs/models.md#qwen-processors). sinkflow only needs the tokenizer, the image
processor, the chat template and the placeholder expansion, so the Qwen families load those pieces directly from
the same checkpoint files.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoImageProcessor, AutoTokenizer
from transformers.utils import cached_file


class ImageTextProcessor:
    """`tokenizer` + `image_processor`, with the processor methods sinkflow uses (chat template, expansion)."""

    def __init__(self, tokenizer, image_processor):
        image_token = getattr(tokenizer, "image_token", None)
        if not image_token:
            raise ValueError(f"{type(tokenizer).__name__} names no image_token (extra_special_tokens)")
        self.tokenizer, self.image_processor, self.image_token = tokenizer, image_processor, image_token

    @classmethod
    def from_pretrained(cls, source: str | Path, trust_remote_code: bool = False) -> ImageTextProcessor:
        """Tokenizer and image processor of a checkpoint; the processor's chat template when the tokenizer has none."""
        tokenizer = AutoTokenizer.from_pretrained(str(source), trust_remote_code=trust_remote_code)
        if not tokenizer.chat_template:
            tokenizer.chat_template = processor_chat_template(source)
        return cls(tokenizer, AutoImageProcessor.from_pretrained(str(source), trust_remote_code=trust_remote_code))

    @property
    def chat_template(self) -> str | None:
        return self.tokenizer.chat_template

    def apply_chat_template(self, messages: list[dict], **kwargs):
        return self.tokenizer.apply_chat_template(messages, **kwargs)

    def replace_image_token(self, image_inputs: dict, image_idx: int) -> str:
        """The placeholder run of one image: one token per merged patch window."""
        merge = self.image_processor.merge_size
        return self.image_token * int(image_inputs["image_grid_thw"][image_idx].prod() // merge**2)

    def save_pretrained(self, path: str | Path) -> None:
        self.tokenizer.save_pretrained(path)
        self.image_processor.save_pretrained(path)


def processor_chat_template(source: str | Path) -> str | None:
    """The chat template a processor would load: `chat_template.jinja`, else `chat_template.json`, else None."""
    for name in ("chat_template.jinja", "chat_template.json"):
        path = cached_file(str(source), name, _raise_exceptions_for_missing_entries=False)
        if path:
            text = Path(path).read_text(encoding="utf-8")
            return text if name.endswith(".jinja") else json.loads(text)["chat_template"]
    return None
