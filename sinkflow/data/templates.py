"""Conversation templates: render a conversation to text and mark the character spans that are supervised.

A template returns the text plus the spans of the assistant answers (including their end-of-turn token); the
collator turns spans into token labels through the tokenizer's offsets, so masking never depends on re-tokenizing
pieces of a conversation (the source of LLaVA's "tokenization mismatch" warnings).
"""

from __future__ import annotations

from dataclasses import dataclass, field

IMAGE_TOKEN = "<image>"
VICUNA_V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
ROLES = {"human": "user", "gpt": "assistant", "user": "user", "assistant": "assistant"}


@dataclass
class Rendered:
    """Rendered conversation text and the [start, end) character spans whose tokens are supervised."""

    text: str
    supervised: list[tuple[int, int]] = field(default_factory=list)


def to_turns(conversations: list[dict]) -> list[tuple[str, str]]:
    """LLaVA `{"from", "value"}` turns -> `(role, text)` with roles `user` / `assistant`."""
    return [(ROLES[turn["from"]], turn["value"]) for turn in conversations]


class VicunaV1:
    """LLaVA-1.5's `vicuna_v1`: `SYSTEM USER: <image>\\nQ ASSISTANT: A</s>USER: ...` (sep " ", sep2 "</s>")."""

    def __init__(self, system: str = VICUNA_V1_SYSTEM):
        self.system = system

    def render(self, processor, turns: list[tuple[str, str]], add_generation_prompt: bool) -> Rendered:
        """Render `turns`; with `add_generation_prompt` end with `ASSISTANT:` for the model to continue."""
        eos = processor.tokenizer.eos_token
        out = Rendered(self.system + " ")
        for role, text in turns:
            if role == "user":
                out.text += f"USER: {text} "
            else:
                out.text += "ASSISTANT: "
                start = len(out.text)
                out.text += text + eos
                out.supervised.append((start, len(out.text)))
        if add_generation_prompt:
            out.text += "ASSISTANT:"
        return out


class ChatML:
    """ChatML after a system turn, `<|im_start|>role\\n<text><|im_end|>\\n` per turn, each image where its `<image>`
    is: LLaVA's `qwen_1_5` conversation, which LLaVA-OneVision trains and is evaluated with. (Its HF chat template
    writes another layout, `<|im_start|>assistant \\n` in a turn against `<|im_start|>assistant\\n` in the
    generation prompt, where answers cannot be located.) Answers and their `<|im_end|>` are supervised."""

    def __init__(self, system: str = "You are a helpful assistant."):
        self.system = system

    def render(self, processor, turns: list[tuple[str, str]], add_generation_prompt: bool) -> Rendered:
        """Render `turns`; with `add_generation_prompt` end with the assistant's turn header."""
        out = Rendered(f"<|im_start|>system\n{self.system}<|im_end|>\n")
        for role, text in turns:
            out.text += f"<|im_start|>{role}\n"
            start = len(out.text)
            out.text += text + "<|im_end|>"
            if role == "assistant":
                out.supervised.append((start, len(out.text)))
            out.text += "\n"
        if add_generation_prompt:
            out.text += "<|im_start|>assistant\n"
        return out


class ProcessorChatTemplate:
    """The checkpoint's own chat template (`processor.apply_chat_template`); answers found by incremental rendering."""

    def render(self, processor, turns: list[tuple[str, str]], add_generation_prompt: bool) -> Rendered:
        """Render `turns` with the processor's Jinja template."""
        if not getattr(processor, "chat_template", None):
            raise ValueError(
                f"{type(processor).__name__} has no chat_template; use template=vicuna_v1 for this checkpoint"
            )
        messages = [self._message(role, text) for role, text in turns]
        out = Rendered(self._apply(processor, messages, add_generation_prompt))
        for k, (role, _) in enumerate(turns):
            if role != "assistant":
                continue
            prefix = self._apply(processor, messages[:k], True)
            upto = self._apply(processor, messages[: k + 1], False)
            if not (upto.startswith(prefix) and out.text.startswith(upto)):
                raise ValueError(
                    "chat template is not prefix-stable (rendering the first turns is not a prefix of the whole); "
                    "answers cannot be located for label masking: use template=vicuna_v1"
                )
            out.supervised.append((len(prefix), len(upto)))
        return out

    @staticmethod
    def _apply(processor, messages, add_generation_prompt):
        if not messages:
            return ""
        return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    @staticmethod
    def _message(role: str, text: str) -> dict:
        """A message whose content puts an image part at each image token, in order. Text after an image loses its
        leading newlines (the `<image>\n` convention; the template draws its own image markup), and blank text before
        the first image is dropped."""
        if IMAGE_TOKEN not in text:
            return {"role": role, "content": [{"type": "text", "text": text}]}
        before, *afters = text.split(IMAGE_TOKEN)
        content = [{"type": "text", "text": before}] if before.strip() else []
        for after in afters:
            content += [{"type": "image"}, {"type": "text", "text": after.lstrip("\n")}]
        return {"role": role, "content": content}
