"""LLaVA-OneVision's processor without its video processor.

transformers' `LlavaOnevisionProcessor` also builds a video processor, which needs torchvision (absent from the CPU
stack, docs/models.md#qwen-processors). sinkflow needs the tokenizer, the image processor, the chat template and
the placeholder counts: this processor holds those pieces and counts placeholders with transformers' own methods.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoImageProcessor, AutoTokenizer, LlavaOnevisionProcessor
from transformers.utils import PROCESSOR_NAME, cached_file

from sinkflow.models.processor import ImageTextProcessor, processor_chat_template

# The `LlavaOnevisionProcessor` settings its placeholder counts read (saved in processor_config.json).
SETTINGS = ("num_image_tokens", "vision_feature_select_strategy", "vision_aspect_ratio", "image_token")


class OnevisionProcessor(ImageTextProcessor):
    """Tokenizer + image processor with `LlavaOnevisionProcessor`'s placeholder expansion: per image its base view's
    `num_image_tokens`, its unpadded high-resolution grid (interpolated down beyond `vision_aspect_ratio`'s
    `anyres_max_<tiles>`) and a newline per grid row; an image of a several-image sample (`batch_num_images`) gets its
    base view and one newline."""

    def __init__(
        self,
        tokenizer,
        image_processor,
        num_image_tokens: int,
        vision_feature_select_strategy: str = "full",
        vision_aspect_ratio: str = "anyres_max_9",
        image_token: str | None = None,
    ):
        self.tokenizer, self.image_processor = tokenizer, image_processor
        self.image_token = image_token or getattr(tokenizer, "image_token", None) or "<image>"
        self.num_image_tokens = num_image_tokens
        self.vision_feature_select_strategy = vision_feature_select_strategy
        self.vision_aspect_ratio = vision_aspect_ratio

    # transformers' own counting, so that placeholders always match what LlavaOnevisionModel packs.
    replace_image_token = LlavaOnevisionProcessor.replace_image_token
    _get_number_of_features = LlavaOnevisionProcessor._get_number_of_features
    _get_unpadded_features = LlavaOnevisionProcessor._get_unpadded_features

    @classmethod
    def from_pretrained(
        cls, source: str | Path, trust_remote_code: bool = False, vision_aspect_ratio: str | None = None
    ) -> OnevisionProcessor:
        """The checkpoint's tokenizer, image processor, chat template and processor_config.json settings
        (`vision_aspect_ratio` overrides the saved one)."""
        tokenizer = AutoTokenizer.from_pretrained(str(source), trust_remote_code=trust_remote_code)
        if not tokenizer.chat_template:
            tokenizer.chat_template = processor_chat_template(source)
        path = cached_file(str(source), PROCESSOR_NAME, _raise_exceptions_for_missing_entries=False)
        settings = json.loads(Path(path).read_text(encoding="utf-8")) if path else {}
        if "num_image_tokens" not in settings:
            raise ValueError(f"{source}: no num_image_tokens in {PROCESSOR_NAME} (a LLaVA-OneVision checkpoint has it)")
        if vision_aspect_ratio is not None:
            settings["vision_aspect_ratio"] = vision_aspect_ratio
        image_processor = AutoImageProcessor.from_pretrained(str(source), trust_remote_code=trust_remote_code)
        return cls(tokenizer, image_processor, **{key: settings[key] for key in SETTINGS if key in settings})

    def save_pretrained(self, path: str | Path) -> None:
        super().save_pretrained(path)
        settings = {key: getattr(self, key) for key in SETTINGS}
        (Path(path) / PROCESSOR_NAME).write_text(
            json.dumps({"processor_class": "LlavaOnevisionProcessor", **settings}, indent=2), encoding="utf-8"
        )
