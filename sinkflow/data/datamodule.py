"""LightningDataModule: instruct-format training data + benchmark-format evaluation sets.

Training conversations are split into train / val deterministically; evaluation items (POPE, MME, MMStar, ...)
become one-turn prompts whose metadata travels with the batch to the predictions file.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader

from sinkflow.data.collate import Collator
from sinkflow.data.instruct import load_instruct
from sinkflow.eval.predictions import read_predictions, record_key

log = logging.getLogger(__name__)


def eval_sample(item: dict, with_image: bool = True) -> dict:
    """A benchmark item as a one-turn sample; everything but the image path and raw prompt goes to `meta`.

    `with_image=False` asks the same question without the image (MMStar's multi-modal gain / leakage).
    """
    meta = {k: v for k, v in item.items() if k not in ("image_path", "prompt")}
    return {
        "id": item["id"],
        "image": item["image_path"] if with_image else None,
        "conversations": [{"from": "human", "value": ("<image>\n" if with_image else "") + item["prompt"]}],
        "meta": meta,
    }


class LVLMDataModule(L.LightningDataModule):
    """Train / val from an instruct JSON; test from benchmark loaders. Call `bind` before use."""

    def __init__(self, train_json: str | None, image_root: str | None, eval_sets: dict[str, Callable] | None = None,
                 prepare: Callable | None = None, annotate: Callable | None = None, batch_size: int = 8,
                 eval_batch_size: int = 16, num_workers: int = 0, val_fraction: float = 0.05,
                 max_length: int | None = 2048, limit_train: int | None = None, limit_eval: int | None = None,
                 seed: int = 0, skip_predicted: str | None = None, without_images: bool = False,
                 obtain: dict[str, str] | None = None):
        super().__init__()
        self.train_json, self.image_root = train_json, image_root
        # A set configured as null (`dataset.eval_sets.pope=null`) is left out.
        self.eval_sets = {name: loader for name, loader in (eval_sets or {}).items() if loader is not None}
        self.prepare, self.annotate = prepare, annotate
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.val_fraction, self.max_length = val_fraction, max_length
        self.limit_train, self.limit_eval, self.seed = limit_train, limit_eval, seed
        self.skip_predicted = skip_predicted
        self.without_images = without_images  # evaluation questions asked without their image
        self.obtain = dict(obtain or {})  # per evaluation set: how to get the data, added to a missing-file error
        self.processor = self.template = None
        self.train_set: list[dict] = []
        self.val_set: list[dict] = []
        self.test_set: list[dict] = []

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
        items = []
        for name, loader in self.eval_sets.items():
            try:
                loaded = loader()
            except FileNotFoundError as err:
                hint = f"\nTo obtain {name}: {self.obtain[name]}" if name in self.obtain else ""
                raise FileNotFoundError(f"evaluation set {name!r}: {err}{hint}") from err
            if self.limit_eval is not None:
                loaded = loaded[: self.limit_eval]
            log.info("evaluation set %s: %d questions", name, len(loaded))
            items.extend(loaded)
        if self.annotate is not None:
            items = [dict(item, **self.annotate(item)) for item in items]
        samples = [eval_sample(item, with_image=not self.without_images) for item in items]
        if self.skip_predicted:
            path = Path(self.skip_predicted)
            done = {record_key(r) for r in read_predictions(path)} if path.exists() else set()
            kept = [s for s in samples if record_key(s["meta"]) not in done]
            log.info("resuming: %d of %d questions already predicted in %s", len(samples) - len(kept),
                     len(samples), self.skip_predicted)
            samples = kept
        return samples

    def generation_collator(self) -> Collator:
        """The collator of evaluation batches (left-padded prompts, nothing supervised)."""
        return self._collator(generate=True)

    def _collator(self, generate: bool) -> Collator:
        if self.processor is None:
            raise RuntimeError("LVLMDataModule.bind(processor, template) must be called before building loaders")
        return Collator(self.processor, self.template, generate=generate, max_length=self.max_length)

    def _loader(self, data, batch_size, shuffle, generate):
        return DataLoader(data, batch_size=batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          collate_fn=self._collator(generate), persistent_workers=self.num_workers > 0)

    def train_dataloader(self):
        return self._loader(self.train_set, self.batch_size, True, False)

    def val_dataloader(self):
        return self._loader(self.val_set, self.batch_size, False, False)

    def test_dataloader(self):
        return self._loader(self.test_set, self.eval_batch_size, False, True)

    def predict_dataloader(self):
        return self.test_dataloader()

