"""LightningDataModule: instruct-format training data + benchmark-format evaluation sets.

Training conversations are split into train / val deterministically; evaluation items (POPE, MME, MMStar, ...)
become one-turn prompts whose metadata travels with the batch to the predictions file.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

import lightning as L
import torch
from torch.utils.data import DataLoader

from sinkflow.checks import number
from sinkflow.data.collate import Collator
from sinkflow.data.instruct import load_instruct
from sinkflow.data.predictions import load_for_resume, record_key
from sinkflow.data.resumable import ResumableLoader
from sinkflow.data.templates import IMAGE_TOKEN

log = logging.getLogger(__name__)


def eval_sample(item: dict, with_image: bool = True) -> dict:
    """A benchmark item as a one-turn sample; everything but the raw prompt goes to `meta` (so into its prediction
    record), the image path(s) only when the question is asked with them.

    One image (`image_path` a path): `<image>` goes before the prompt. Several (`image_path` a list): the prompt
    already holds one `<image>` per image where each goes, and is asked as it is. `with_image=False` asks the same
    question without any image, every placeholder removed (MMStar's multi-modal gain / leakage).
    """
    meta = {k: v for k, v in item.items() if k != "prompt" and (with_image or k != "image_path")}
    several = isinstance(item["image_path"], list)
    if not with_image:
        text = item["prompt"].replace(IMAGE_TOKEN, "") if several else item["prompt"]
    else:
        text = item["prompt"] if several else f"{IMAGE_TOKEN}\n{item['prompt']}"
    return {
        "id": item["id"],
        "image": item["image_path"] if with_image else None,
        "conversations": [{"from": "human", "value": text}],
        "meta": meta,
    }


def prompt_length(sample: dict) -> tuple[int, int, int]:
    """A sample's size for ordering: its answer-length limit (a batch generates as long as its longest limit, so
    questions with the same limit go together), its image count (each image is a fixed block of tokens for LLaVA),
    then its text length in characters (a tokenizer-free proxy for the text tokens)."""
    image = sample["image"]
    images = 0 if image is None else len(image) if isinstance(image, list) else 1
    return sample.get("meta", {}).get("max_new_tokens", 0), images, len(sample["conversations"][0]["value"])


def by_prompt_length(samples: list[dict]) -> list[dict]:
    """The samples longest prompt first (a batch pads to its longest row, so neighbours of similar length waste
    little; the longest batch, the one most likely to run out of memory, comes first). Stable: equal lengths keep
    their order, so the order depends only on the samples."""
    return sorted(samples, key=prompt_length, reverse=True)


class LVLMDataModule(L.LightningDataModule):
    """Train / val from an instruct JSON; test from benchmark loaders. Call `bind` before use."""

    def __init__(
        self,
        train_json: str | None,
        image_root: str | None,
        eval_sets: dict[str, Callable] | None = None,
        prepare: Callable | None = None,
        annotate: Callable | None = None,
        batch_size: int = 8,
        eval_batch_size: int = 16,
        num_workers: int = 0,
        val_fraction: float = 0.05,
        max_length: int | None = 2048,
        limit_train: int | None = None,
        limit_eval: int | None = None,
        seed: int = 0,
        skip_predicted: str | None = None,
        without_images: bool = False,
        obtain: dict[str, str] | None = None,
        sort_eval: bool = True,
        max_new_tokens: dict[str, int] | None = None,
        packing: bool = False,
    ):
        super().__init__()
        self.packing = packing  # training batches share rows once merged (models.packing)
        self.train_json, self.image_root = train_json, image_root
        # A set configured as null (`dataset.eval_sets.pope=null`) is left out.
        self.eval_sets = {name: loader for name, loader in (eval_sets or {}).items() if loader is not None}
        self.prepare, self.annotate = prepare, annotate
        self.batch_size = number("dataset.batch_size", batch_size, integer=True, at_least=1)
        self.eval_batch_size = number("dataset.eval_batch_size", eval_batch_size, integer=True, at_least=1)
        self.num_workers = number("dataset.num_workers", num_workers, integer=True, at_least=0)
        self.val_fraction = number("dataset.val_fraction", val_fraction, at_least=0, below=1)
        self.max_length = number("dataset.max_length", max_length, integer=True, at_least=1, optional=True)
        self.limit_train = number("dataset.limit_train", limit_train, integer=True, at_least=1, optional=True)
        self.limit_eval = number("dataset.limit_eval", limit_eval, integer=True, at_least=1, optional=True)
        self.seed = seed
        self.skip_predicted = skip_predicted
        self.without_images = without_images  # evaluation questions asked without their images
        self.obtain = dict(obtain or {})  # per evaluation set: how to get the data, added to a missing-file error
        # Evaluation questions longest prompt first (less padding); predictions are keyed by id, not by order.
        self.sort_eval = sort_eval
        # Per evaluation set, the answer-length limit its toolkit generates with (the others: model.generation's).
        self.max_new_tokens = {
            name: number(f"dataset.max_new_tokens.{name}", limit, integer=True, at_least=1)
            for name, limit in (max_new_tokens or {}).items()
        }
        unknown = sorted(set(self.max_new_tokens) - set(self.eval_sets))
        if unknown:
            log.warning("dataset.max_new_tokens names %s, which dataset.eval_sets does not evaluate", unknown)
        self.processor = self.template = None
        self.train_loader: ResumableLoader | None = None
        self._resume: dict[str, int] | None = None  # the training loader's position in the checkpoint resumed from
        self.train_set: list[dict] = []
        self.val_set: list[dict] = []
        self.test_set: list[dict] = []
        # Per evaluation set, once loaded: its questions and how many are asked (dataset.limit_eval keeps the first).
        self.eval_counts: dict[str, dict[str, int]] = {}

    def bind(self, processor, template) -> LVLMDataModule:
        """Attach the model's processor and conversation template (known only once the model is loaded)."""
        self.processor, self.template = processor, template
        return self

    def prepare_data(self):
        if self.prepare is not None:
            self.prepare()

    def setup(self, stage: str | None = None):
        if stage in (None, "fit", "validate") and not self.train_set:
            if self.train_json is None:
                raise ValueError("dataset.train_json is not set: this dataset has no training split")
            records = load_instruct(self.train_json, self.image_root)
            random.Random(self.seed).shuffle(records)
            n_val = int(round(len(records) * self.val_fraction))
            self.val_set, self.train_set = records[:n_val], records[n_val:]
            if self.limit_train is not None:
                self.train_set = self.train_set[: self.limit_train]
        if stage in (None, "test", "predict") and not self.test_set:
            self.test_set = self._load_eval()

    def _load_eval(self) -> list[dict]:
        if not self.eval_sets:
            raise ValueError(
                "dataset.eval_sets names no evaluation set: there is nothing to evaluate (train.py "
                "test=false skips the test phase)"
            )
        items = []
        for name, loader in self.eval_sets.items():
            try:
                loaded = loader()
            except FileNotFoundError as err:
                hint = f"\nTo obtain {name}: {self.obtain[name]}" if name in self.obtain else ""
                raise FileNotFoundError(f"evaluation set {name!r}: {err}{hint}") from err
            total = len(loaded)
            if self.limit_eval is not None:
                loaded = loaded[: self.limit_eval]
            self.eval_counts[name] = {"questions": total, "asked": len(loaded)}
            if name in self.max_new_tokens:
                loaded = [dict(item, max_new_tokens=self.max_new_tokens[name]) for item in loaded]
            log.info("evaluation set %s: %d questions", name, len(loaded))
            items.extend(loaded)
        if self.annotate is not None:
            items = [dict(item, **self.annotate(item)) for item in items]
        samples = [eval_sample(item, with_image=not self.without_images) for item in items]
        if self.skip_predicted:
            done = {record_key(r) for r in load_for_resume(self.skip_predicted)}
            kept = [s for s in samples if record_key(s["meta"]) not in done]
            log.info(
                "resuming: %d of %d questions already predicted in %s",
                len(samples) - len(kept),
                len(samples),
                self.skip_predicted,
            )
            samples = kept
        return samples

    def generation_collator(self) -> Collator:
        """The collator of evaluation batches (left-padded prompts, nothing supervised)."""
        return self._collator(generate=True)

    def _collator(self, generate: bool, pack: bool = False) -> Collator:
        if self.processor is None:
            raise RuntimeError("LVLMDataModule.bind(processor, template) must be called before building loaders")
        return Collator(self.processor, self.template, generate=generate, max_length=self.max_length, pack=pack)

    def _loader(self, data, batch_size, generate, pack=False):
        # Its own generator: creating an iterator draws the workers' base seed from it, not from the global RNG that
        # training draws from, so validating (or resuming, which may set a validation up) shifts no training draw.
        return DataLoader(
            data,
            batch_size=batch_size,
            num_workers=self.num_workers,
            collate_fn=self._collator(generate, pack),
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self):
        if self.trainer is not None and self.trainer.overfit_batches:
            # `debug=overfit`: the same first batches every epoch, in order; Lightning would otherwise rebuild the
            # shuffling loader with its own sampler, which ResumableLoader does not take.
            return self._loader(self.train_set, self.batch_size, generate=False, pack=self.packing)
        # Under DDP, this process's share (as Lightning's DistributedSampler would give it).
        sharding = (self.trainer.distributed_sampler_kwargs if self.trainer is not None else None) or {}
        self.train_loader = ResumableLoader(
            self.train_set,
            batch_size=self.batch_size,
            seed=self.seed,
            num_workers=self.num_workers,
            collate_fn=self._collator(False, pack=self.packing),
            persistent_workers=self.num_workers > 0,
            **sharding,
        )
        if self._resume is not None:
            self.train_loader.load_state_dict(self._resume)
            self._resume = None
        return self.train_loader

    # The training loader's position travels with the data module's state, which Lightning restores before the
    # loader is built. Lightning saves it with its loops too, but gives it back only to a loader built after the
    # checkpoint is read, and `configure_optimizers` builds it earlier (`trainer.estimated_stepping_batches`).
    def state_dict(self) -> dict:
        return {"train_loader": self.train_loader.state_dict()} if self.train_loader is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        resume = state_dict.get("train_loader")
        if self.train_loader is not None and resume is not None:  # built already: FSDP restores after its setup
            self.train_loader.load_state_dict(resume)
        else:
            self._resume = resume

    def val_dataloader(self):
        return self._loader(self.val_set, self.batch_size, False)

    def test_dataloader(self):
        # Only the loader is ordered: `test_set` keeps dataset order (validation and analyses take its first questions).
        return self._loader(
            by_prompt_length(self.test_set) if self.sort_eval else self.test_set, self.eval_batch_size, True
        )

    def predict_dataloader(self):
        return self.test_dataloader()
