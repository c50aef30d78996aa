"""The processors of the tiling families (InternVL, Idefics3 / SmolVLM) as sinkflow's collator uses them.

The collator calls the image processor itself and then the processor's `replace_image_token` per image
(`sinkflow/data/collate.py`), so whatever a processor's `__call__` passes its image processor by default has to be set
on the image processor: InternVL's tiling (`crop_to_patches`), Idefics3's crop grids (`return_row_col_info`).
transformers' InternVLProcessor and SmolVLMProcessor also build a video processor, which needs torchvision (absent
from the CPU stack, docs/models.md#qwen-processors), and SmolVLMProcessor needs num2words; their image paths are
reproduced here on the checkpoint's own files.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoImageProcessor, AutoTokenizer, Idefics3Processor
from transformers.utils import cached_file

from sinkflow.models.processor import processor_chat_template


class InternVLImages:
    """InternVLProcessor's image path without its video processor: each image becomes `<img>`, `image_seq_length`
    `<IMG_CONTEXT>` per tile, `</img>`; images are tiled (`crop_to_patches`, InternVLProcessor's default)."""

    def __init__(self, tokenizer, image_processor, image_seq_length: int = 256):
        self.tokenizer, self.image_processor, self.image_seq_length = tokenizer, image_processor, image_seq_length
        self.image_token = tokenizer.context_image_token
        self.start_image_token, self.end_image_token = tokenizer.start_image_token, tokenizer.end_image_token
        # The processor passes crop_to_patches=True on every call; the collator calls the image processor itself.
        image_processor.crop_to_patches = True

    @classmethod
    def from_pretrained(cls, source: str | Path, trust_remote_code: bool = False) -> InternVLImages:
        """The checkpoint's tokenizer, image processor, chat template and `image_seq_length` (processor_config.json)."""
        tokenizer = AutoTokenizer.from_pretrained(str(source), trust_remote_code=trust_remote_code)
        if not tokenizer.chat_template:
            tokenizer.chat_template = processor_chat_template(source)
        image_processor = AutoImageProcessor.from_pretrained(str(source), trust_remote_code=trust_remote_code)
        return cls(tokenizer, image_processor, _processor_config(source).get("image_seq_length", 256))

    @property
    def chat_template(self) -> str | None:
        return self.tokenizer.chat_template

    def apply_chat_template(self, messages: list[dict], **kwargs):
        return self.tokenizer.apply_chat_template(messages, **kwargs)

    def replace_image_token(self, image_inputs: dict, image_idx: int) -> str:
        tiles = int(image_inputs["num_patches"][image_idx])
        return self.start_image_token + self.image_token * (self.image_seq_length * tiles) + self.end_image_token

    def save_pretrained(self, path: str | Path) -> None:
        self.tokenizer.save_pretrained(path)
        self.image_processor.save_pretrained(path)
        config = {"image_seq_length": self.image_seq_length, "processor_class": "InternVLProcessor"}
        (Path(path) / "processor_config.json").write_text(json.dumps(config, indent=2))


def split_images(image_processor):
    """The image processor returning each image's crop grid (`rows`, `cols`), as Idefics3's and SmolVLM's processors
    ask it to: the placeholder expansion is built from them."""
    image_processor.return_row_col_info = True
    return image_processor


def load_idefics3_processor(source: str, trust_remote_code: bool = False) -> Idefics3Processor:
    """transformers' Idefics3Processor on a checkpoint's tokenizer and image processor, with its tokens per crop
    (`image_seq_len` of processor_config.json). Also SmolVLM's: its processor's image prompt is Idefics3's."""
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    image_processor = AutoImageProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)
    return Idefics3Processor(
        split_images(image_processor),
        tokenizer,
        image_seq_len=_processor_config(source).get("image_seq_len", 169),
        chat_template=tokenizer.chat_template or processor_chat_template(source),
    )


def _processor_config(source: str | Path) -> dict:
    """The checkpoint's processor_config.json (the processor's own options), or {} without one."""
    path = cached_file(str(source), "processor_config.json", _raise_exceptions_for_missing_entries=False)
    return json.loads(Path(path).read_text()) if path else {}
