"""Batch building: template rendering, image placeholder expansion, tokenization and label masking.

Only assistant answers (and their end-of-turn token) are supervised; system prompt, user turns, image
placeholders and padding get label -100. Training pads on the right, generation on the left.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence

import torch
from PIL import Image

from sinkflow.data.templates import IMAGE_TOKEN, to_turns
from sinkflow.pathway import IGNORE_INDEX, check_selection

TEXT_KEYS = ("input_ids", "attention_mask", "labels")
# Batch entries that describe the samples rather than feed the model.
BOOKKEEPING_KEYS = ("meta", "image_keys", "image_questions", "image_samples", "n_truncated")


def batch_to(batch: dict, device: torch.device | str) -> dict:
    """The batch with its tensors on `device` (metadata lists stay as they are)."""
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


# A sample's image: a file, or an image already in memory (lmms-eval hands its tasks' images over decoded).
ImageSource = str | Image.Image


def load_image(source: ImageSource, sample_id=None) -> Image.Image:
    """An image as RGB: a file opened, with an error naming it (and the sample whose image it is, given its id), or
    an image in memory converted."""
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    try:
        with Image.open(source) as img:
            return img.convert("RGB")
    except (OSError, ValueError) as err:
        raise OSError(f"cannot read image {source}{_question_suffix(sample_id)}: {err}") from err


def _question_suffix(sample_id) -> str:
    """` (question 'id')` for error messages, or nothing without an id."""
    return "" if sample_id is None else f" (question {str(sample_id)!r})"


class Collator:
    """Turns samples `{"id", "image", "conversations", "meta"}` into the batch contract of docs/contracts.md#batch.

    The batch also carries `n_truncated`: rows cut to `max_length` (their tail answers lose supervision), which
    the module logs as `train/truncated_rows`.

    `generate=True` renders the conversation up to a final assistant prompt (the last assistant turn, if any, is
    dropped), pads on the left and supervises nothing. `pack=True` marks training batches `pack` (the tokens per packed
    row: `max_length`, or None): the module packs their samples into shared rows once merged (`models.packing`,
    `dataset.packing`).
    """

    def __init__(
        self, processor, template, *, generate: bool = False, max_length: int | None = None, pack: bool = False
    ):
        if pack and generate:
            raise ValueError("dataset.packing packs training rows; generation prompts are never packed")
        self.processor = processor
        self.template = template
        self.generate = generate
        self.max_length = max_length
        self.pack = pack

    @property
    def image_token(self) -> str:
        """The placeholder the processor expands (`<image>` for LLaVA, `<|image_pad|>` for Qwen)."""
        return getattr(self.processor, "image_token", None) or IMAGE_TOKEN

    def __call__(self, samples: list[dict]) -> dict:
        texts, spans, images, origins, per_sample = [], [], [], [], []
        for sample in samples:
            turns = to_turns(sample["conversations"])
            if self.generate and turns and turns[-1][0] == "assistant":
                turns = turns[:-1]
            rendered = self.template.render(self.processor, turns, add_generation_prompt=self.generate)
            paths = image_paths(sample)
            n_placeholders = rendered.text.count(self.image_token)
            if n_placeholders != len(paths):
                raise ValueError(
                    f"sample {sample['id']!r}: {n_placeholders} {self.image_token} tokens in the conversation for "
                    f"{_count_images(len(paths))}; expected exactly one per image"
                )
            for path in paths:
                images.append(load_image(path, sample["id"]))
                origins.append((path, sample["id"]))
            per_sample.append(len(paths))
            texts.append(rendered.text)
            spans.append(rendered.supervised)

        prompts = list(texts)
        image_inputs = self._process_images(images, origins, per_sample)
        batch = self._encode(texts, spans, image_inputs)
        batch.update(image_inputs)
        batch["n_truncated"] = 0
        if self.max_length is not None and batch["input_ids"].shape[1] > self.max_length:
            self._truncate(batch)
        # The prompt is recorded as rendered, before placeholder expansion.
        batch["meta"] = [dict(s.get("meta", {}), id=s["id"], prompt=p) for s, p in zip(samples, prompts)]
        # Per image, in the order the processor saw them (sample by sample, each sample's images in prompt order).
        # One stable key per image: per-image random choices (random_control) are seeded by it, sink statistics count
        # each image once by it.
        batch["image_keys"] = [
            image_key(sample_key(dict(s.get("meta", {}), id=s["id"])), k)
            for s in samples
            for k in range(len(image_paths(s)))
        ]
        # The question asked about each image (its sample's first user turn), for question-conditioned routers.
        batch["image_questions"] = [first_question(s["conversations"]) for s in samples for _ in image_paths(s)]
        # The sample (batch row) each image belongs to: routing decisions find their record by it.
        batch["image_samples"] = [row for row, s in enumerate(samples) for _ in image_paths(s)]
        if self.pack:
            batch["pack"] = {"capacity": self.max_length}
        return batch

    def _process_images(
        self, images: list[Image.Image], origins: list[tuple[str, object]], per_sample: list[int]
    ) -> dict:
        """The image processor's tensors for the batch; an image it rejects is named with its file and sample id
        (`origins`: per image, its path and its sample's id).

        An image processor that reports the images of each sample (`batch_num_images`: LLaVA-OneVision, which does
        not tile the images of a several-image question) gets them grouped by sample (`per_sample`: images per
        sample), as transformers' processor hands them over; any other gets the flat list."""
        if not images:
            return {}
        image_processor = self.processor.image_processor
        given: list = images
        if "batch_num_images" in getattr(image_processor, "model_input_names", ()):
            ends = itertools.accumulate(per_sample)
            given = [images[end - n : end] for end, n in zip(ends, per_sample) if n]
        try:
            return image_processor(given, return_tensors="pt")
        except Exception:
            # Only now, one image at a time, to find the culprit: the happy path stays one call.
            for image, (path, sample_id) in zip(images, origins):
                try:
                    self.processor.image_processor([image], return_tensors="pt")
                except Exception as err:
                    raise ValueError(f"cannot process image {path}{_question_suffix(sample_id)}: {err}") from err
            raise  # no single image fails: the batch as a whole does

    def ask(self, batch: dict, questions: list[str], images: Sequence[int] | None = None) -> dict:
        """The text inputs (`input_ids`, `attention_mask`, `labels`) of generation prompts asking `questions[k]`
        about the batch's image `images[k]` (indices into its images, repeats allowed; default: image k), each
        placeholder expanded for its image from the batch's image tensors.

        The routing pass of strategies that let the model decide (cot_route): the images are already encoded, so the
        prompts carry no image tensors; the family selects what its merge reads of them
        (`VisualFamily.select_images`)."""
        if not self.generate:
            raise ValueError("Collator.ask builds generation prompts: create the collator with generate=True")
        n_images = len(batch.get("image_keys", []))
        images = list(range(n_images)) if images is None else check_selection(images, n_images)
        if len(questions) != len(images):
            raise ValueError(f"{len(questions)} questions for {len(images)} images to ask about")
        texts, spans = [], []
        for question in questions:
            turns = to_turns([{"from": "human", "value": f"{IMAGE_TOKEN}\n{question}"}])
            rendered = self.template.render(self.processor, turns, add_generation_prompt=True)
            texts.append(rendered.text)
            spans.append(rendered.supervised)
        image_inputs = {k: v for k, v in batch.items() if k not in (*TEXT_KEYS, *BOOKKEEPING_KEYS)}
        return self._encode(texts, spans, image_inputs, images)

    def _encode(
        self,
        texts: list[str],
        spans: list[list[tuple[int, int]]],
        image_inputs: dict,
        images: list[int] | None = None,
    ) -> dict:
        """Expand each text's image tokens (placeholder k shows the batch's image `images[k]`; by default the images
        in order), tokenize, pad and mask the labels."""
        shown = iter(images) if images is not None else itertools.count()
        for i, text in enumerate(texts):
            n_images = text.count(self.image_token)
            if n_images:
                expansions = [
                    self.processor.replace_image_token(image_inputs, idx) for idx in itertools.islice(shown, n_images)
                ]
                texts[i], spans[i] = _expand(text, spans[i], self.image_token, expansions)

        tokenizer = self.processor.tokenizer
        enc = tokenizer(
            texts,
            return_offsets_mapping=not self.generate,  # generation prompts supervise nothing; offsets cost time
            padding=True,
            padding_side="left" if self.generate else "right",
            return_tensors="pt",
        )
        labels = torch.full_like(enc["input_ids"], IGNORE_INDEX)
        if not self.generate:
            for row, (offsets, row_spans) in enumerate(zip(enc["offset_mapping"], spans)):
                keep = enc["attention_mask"][row].bool()
                for start, end in row_spans:
                    # A token is supervised when its characters overlap an answer span.
                    hit = (offsets[:, 1] > start) & (offsets[:, 0] < end) & keep
                    labels[row, hit] = enc["input_ids"][row, hit]
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}

    def _truncate(self, batch: dict) -> None:
        """Cut right-padded training rows to `max_length`; never cut through image placeholders."""
        if self.generate:
            raise ValueError(f"a prompt exceeds dataset.max_length={self.max_length}; raise it for evaluation")
        image_id = self.processor.tokenizer.convert_tokens_to_ids(self.image_token)
        tail = batch["input_ids"][:, self.max_length :]
        if (tail == image_id).any():
            raise ValueError(
                f"dataset.max_length={self.max_length} would cut image placeholder tokens; raise it above the "
                "number of image tokens plus the prompt"
            )
        # Counted in the batch (not on the collator) so that the count survives DataLoader worker processes.
        batch["n_truncated"] = int(batch["attention_mask"][:, self.max_length :].any(dim=1).sum())
        for key in ("input_ids", "attention_mask", "labels"):
            batch[key] = batch[key][:, : self.max_length]


def sample_key(meta: dict) -> str:
    """A sample's key, unique across evaluation sets: `benchmark/id` (ids are unique within a benchmark only; an
    MMStar index and an open-set question id can be equal), or the id of a training sample."""
    return f"{meta['benchmark']}/{meta['id']}" if meta.get("benchmark") else str(meta["id"])


def key_hash(key: str) -> int:
    """A stable 63-bit id of a key (the same in every process and run), for keys kept in tensors."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") >> 1


def image_paths(sample: dict) -> list[ImageSource]:
    """A sample's images: none, one (`image` a path or an image) or several (`image` a list of them, in placeholder
    order)."""
    image = sample.get("image")
    return [] if image is None else [image] if isinstance(image, (str, Image.Image)) else list(image)


def image_key(key: str, k: int) -> str:
    """The key of a sample's k-th image: the sample key itself for the first (so one-image keys never change), then
    `key#k`."""
    return key if k == 0 else f"{key}#{k}"


def _count_images(n: int) -> str:
    """`n` images in words, for error messages."""
    return "no image" if n == 0 else "one image" if n == 1 else f"{n} images"


def first_question(conversations: list[dict]) -> str:
    """The first user turn without the image placeholder."""
    return (
        next((t["value"] for t in conversations if t["from"] in ("human", "user")), "").replace(IMAGE_TOKEN, "").strip()
    )


def _expand(text: str, spans: list[tuple[int, int]], token: str, expansions: list[str]):
    """Replace the k-th image token with `expansions[k]`; a span (never one holding a token) moves by the growth of
    the tokens before it."""
    pieces = text.split(token)
    starts, at = [], len(pieces[0])  # where each token starts in `text`
    for piece in pieces[1:]:
        starts.append(at)
        at += len(token) + len(piece)
    grows = [len(expansion) - len(token) for expansion in expansions]
    expanded = pieces[0] + "".join(expansion + piece for expansion, piece in zip(expansions, pieces[1:]))
    moved = []
    for s, e in spans:
        shift = sum(grow for start, grow in zip(starts, grows) if start <= s)
        moved.append((s + shift, e + shift))
    return expanded, moved
