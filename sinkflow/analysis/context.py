"""What every `analyze.py` task gets, and how `analyze.py` builds it from the config and the dataset.

A task (`sinkflow.analysis.task.Analysis`) reads batches from its context (`ctx.batches()`: the evaluation
prompts; `ctx.images(...)`: the distinct images of a split), computes its statistics, and hands its summary and
figures to `ctx.write`, which saves `<task>.json` and `<figure>.png` into the run directory and logs them to W&B
when that logger is on. A split of the dataset is loaded the first time a task reads it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from omegaconf import DictConfig
from rich.progress import track

from sinkflow.caption import Caption
from sinkflow.checks import number
from sinkflow.data.collate import Collator, batch_to
from sinkflow.data.datamodule import LVLMDataModule
from sinkflow.data.templates import IMAGE_TOKEN
from sinkflow.loggers import leaves, log_images, log_summary_table
from sinkflow.module import SinkflowModule
from sinkflow.pathway import VisualFeatures
from sinkflow.plotting import pyplot
from sinkflow.sinks.detectors.base import token_norms

plt = pyplot()
Split = Literal["eval", "train"]  # the evaluation sets' samples, or the training samples
log = logging.getLogger(__name__)


@dataclass
class AnalysisContext:
    """One analysis run: the model (eval mode), batch sources, the task's settings, the output directory."""

    module: SinkflowModule  # eval mode; module.hf, module.family, module.detector, module.processor
    batches: Callable[[], Iterator[dict]]  # a fresh iterator of generation batches (left-padded), on device
    settings: DictConfig  # cfg[task]: the task's own section of conf/analyze.yaml
    output_dir: Path  # exists
    loggers: list = field(default_factory=list)  # Lightning loggers built from cfg.logger (may be empty)
    task: str = "analysis"  # names the JSON file and prefixes the logged keys
    # images(split, max_images): a fresh iterator of image-only generation batches over the split's distinct
    # images (the first `max_images`, null: all, in dataset order), on device
    images: Callable[[Split, int | None], Iterator[dict]] | None = None
    caption: Caption | None = None  # what every figure is of (model, strategy, data): `analysis_context` builds it

    def figure_caption(self, count: str) -> str:
        """The caption's text for a figure of `count` (e.g. "64 images")."""
        if self.caption is None:
            raise ValueError("AnalysisContext.caption is not set: every figure is titled with it (Caption.of)")
        return self.caption.text(count)

    def write(self, summary: dict, figures: dict[str, plt.Figure], summary_name: str | None = None) -> dict:
        """Save `<summary_name>.json` (by default `<task>.json`), its numeric leaves flat in `metrics.json`
        (`<task>/<key>/...`) and `<figure>.png` for each figure, log them, close the figures; return `summary`. A
        figure must be titled with the summary's caption."""
        summary_name = summary_name or self.task
        caption = " ".join(str(summary.get("caption", "")).split())
        for figure_name, figure in figures.items():
            if not caption or caption not in " ".join(figure.get_suptitle().split()):
                raise ValueError(
                    f"{self.task}: figure {figure_name!r} is not titled with the summary's caption (what model, "
                    "strategy and data it shows): draw it with sinkflow.plotting.titled(fig, what, summary['caption'])"
                )
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / f"{summary_name}.json").write_text(json.dumps(summary, indent=2))
        paths = {}
        for figure_name, figure in figures.items():
            paths[figure_name] = self.output_dir / f"{figure_name}.png"
            figure.savefig(paths[figure_name], dpi=120)
            plt.close(figure)
        scalars = {f"{self.task}/{k}": v for k, v in flatten(summary).items()}
        # the summary's numbers, flat, as train.py and evaluate.py write theirs: what a multirun's table reads
        (self.output_dir / "metrics.json").write_text(json.dumps(scalars, indent=2))
        for logger in self.loggers:
            logger.log_metrics(scalars)
        log_images(self.loggers, {f"{self.task}/{name}": path for name, path in paths.items()})
        log_summary_table(self.loggers, f"{self.task}/{summary_name}", summary)
        for logger in self.loggers:
            logger.save()
        log.info(
            "%s written to %s (%s)",
            self.task,
            self.output_dir,
            ", ".join([f"{summary_name}.json", *(p.name for p in paths.values())]),
        )
        return summary


def flatten(summary: dict, prefix: str = "") -> dict[str, float]:
    """The numeric leaves of a nested summary as flat `/`-joined keys (what scalar loggers accept)."""
    return {
        name: float(value)
        for name, value in leaves(summary, prefix).items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value  # no NaN
    }


@dataclass
class VisualTokens:
    """A batch's visual tokens as the LLM sees them (strategy `none`: every token, raster order, in place).

    Token-level tensors are [n_images, S] with S = N // group (the LLM tokens of the longest image); `valid`
    marks real tokens. `rows[i]` is image i's batch row, `columns[i, s]` the sequence column of its token s
    in `inputs` (0 where not valid) and `ends[i]` the column after its placeholder block (which may end with fixed
    tokens, e.g. LLaVA-NeXT's newline).
    """

    inputs: dict  # the LLM inputs: inputs_embeds, attention_mask (+ position_ids for M-RoPE families), no labels
    visual: VisualFeatures  # projector-input features (with the simulated sinks when planted)
    sinks: torch.Tensor  # [n_images, S] bool: ViT sinks by the configured detector
    norms: torch.Tensor  # [n_images, S] float32: each token's ViT norm (see `token_vit_norms`)
    valid: torch.Tensor  # [n_images, S] bool
    rows: torch.Tensor  # [n_images] long
    columns: torch.Tensor  # [n_images, S] long
    ends: torch.Tensor  # [n_images] long

    @property
    def planted(self) -> torch.Tensor | None:
        """[n_images, S] bool: the simulated sinks (ground truth), when planted."""
        return self.visual.to_tokens(self.visual.planted) if self.visual.planted is not None else None


def visual_tokens(module: SinkflowModule, batch: dict) -> VisualTokens:
    """Run the pathway on a generation batch and locate every image's tokens in the merged sequence.

    With strategy `none` the family scatters each image's tokens into its placeholders in row-major order
    (exactly what transformers does), so image i's tokens sit at the i-th run of `blocks[i]` placeholders, in its
    layout's visual slots when it has one (the others hold fixed tokens).
    """
    if module.strategy.name != "none":
        raise ValueError(f"analyses read the vanilla pathway: use sink_strategy=none, got {module.strategy.name!r}")
    if module.detector is None:
        raise ValueError("analyses need a ViT sink detector: set sink_strategy.detector (sink_strategy/detector=...)")
    seen = module.pathway(batch, padding_side="left")
    if seen.visual is None:
        raise ValueError("the batch has no images (dataset.without_images=true?): analyses need images")
    inputs = seen.inputs
    inputs.pop("labels", None)  # generation batches supervise nothing; a loss would only cost memory
    visual = seen.visual
    placeholders = (batch["input_ids"] == module.family.image_token_id(module.hf)).nonzero()  # row-major
    slots, width = visual.slots, visual.features.shape[1] // visual.group
    rows = torch.zeros(len(slots), dtype=torch.long)
    columns = torch.zeros(len(slots), width, dtype=torch.long)
    ends = torch.zeros(len(slots), dtype=torch.long)
    start = 0
    for i, (n, block) in enumerate(zip(slots, visual.blocks)):
        rows[i] = placeholders[start, 0]
        run = placeholders[start : start + block, 1].cpu()
        columns[i, :n] = run[visual.layouts[i].cpu()] if visual.layouts else run
        ends[i] = run[-1] + 1
        start += block
    device = visual.features.device
    return VisualTokens(
        inputs=inputs,
        visual=visual,
        sinks=seen.sinks,
        norms=token_vit_norms(module, visual),
        valid=visual.valid()[:, :: visual.group],
        rows=rows.to(device),
        columns=columns.to(device),
        ends=ends.to(device),
    )


def token_vit_norms(module: SinkflowModule, visual: VisualFeatures) -> torch.Tensor:
    """[n_images, S] ViT norm of each LLM token: the patch norm itself when one patch makes one token.

    When patches merge (Qwen's 2x2), it follows how the family turns patch sinks into token sinks: the norm of
    the patches side by side (`own_norm`), else the largest patch norm (`any_patch`: a token is a sink if any of
    its patches is, i.e. if its largest patch norm is above the threshold).
    """
    if module.family.sink_tokens == "own_norm":
        return token_norms(visual.token_features())
    norms = token_norms(visual.features)
    return norms.view(norms.shape[0], -1, visual.group).amax(dim=-1)


def image_names(batch: dict) -> list[str]:
    """One name per image: the evaluation item's image file when it carries one, else its sample id (the
    evaluation sets ask several questions about one image; tasks that look at each image once key on this)."""
    if len(batch["image_keys"]) != len(batch["meta"]):
        raise ValueError("this analysis needs exactly one image per sample (dataset.without_images must be false)")
    return [str(meta.get("image", key)) for meta, key in zip(batch["meta"], batch["image_keys"])]


def analysis_context(
    cfg: DictConfig, module: SinkflowModule, datamodule: LVLMDataModule, loggers: list
) -> AnalysisContext:
    """The context of `cfg.task`: `batches()` over the dataset's evaluation prompts (the first `max_samples`, the
    task's own or the shared one; with `one_question_per_image`, only the first question about each image), and
    `images(split, max_images)` over the distinct images of a split; both in batches of `batch_size` (the task's
    own or the shared one). A split is loaded the first time a task reads it."""
    settings = cfg[cfg.task]
    datamodule.prepare_data()
    batch_size = number(
        f"{cfg.task}.batch_size" if "batch_size" in settings else "batch_size",
        settings.get("batch_size", cfg.batch_size),
        integer=True,
        at_least=1,
    )
    collate = datamodule.generation_collator()
    # No `max_length` for image-only prompts: it bounds the dataset's real prompts, and an image alone may exceed it
    # (LLaVA-1.5's 576 image tokens against shapes' 512).
    collate_images = Collator(datamodule.processor, datamodule.template, generate=True)

    def split_samples(split: Split) -> list[dict]:
        datamodule.setup("fit" if split == "train" else "test")
        return datamodule.train_set if split == "train" else datamodule.test_set

    def collated(samples: list[dict], collate_chunk: Collator, what: str) -> Iterator[dict]:
        chunks = [samples[i : i + batch_size] for i in range(0, len(samples), batch_size)]
        for chunk in track(chunks, description=f"{cfg.task}: {len(samples)} {what}"):
            yield batch_to(collate_chunk(chunk), module.device)

    def batches() -> Iterator[dict]:
        samples = one_image_each(split_samples("eval"))
        if cfg.one_question_per_image:
            samples = list({s["image"]: s for s in reversed(samples)}.values())[::-1]  # first question per image
        limit = settings.get("max_samples", cfg.max_samples)
        return collated(samples[:limit] if limit is not None else samples, collate, "samples")

    def images(split: Split, max_images: int | None) -> Iterator[dict]:
        return collated(distinct_images(split_samples(split))[:max_images], collate_images, "images")

    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    return AnalysisContext(
        module=module,
        batches=batches,
        settings=settings,
        output_dir=output_dir,
        loggers=loggers,
        task=cfg.task,
        images=images,
        caption=Caption.of(module, datamodule),
    )


def one_image_each(samples: list[dict]) -> list[dict]:
    """The samples that show one image: analyses map each image's tokens to its question's answer, so a question
    about several images (MMMU's) is left out, with a log line that counts them."""
    kept = [sample for sample in samples if not isinstance(sample.get("image"), list)]
    if len(kept) < len(samples):
        log.info(
            "analyses read one image per question: %d questions with several images left out", len(samples) - len(kept)
        )
    return kept


def distinct_images(samples: list[dict]) -> list[dict]:
    """One image-only sample per distinct image of `samples`, in order; each keeps the id of the first sample that
    shows its image, so that an image the processor rejects is named with it."""
    first_ids: dict[str, object] = {}
    for sample in samples:
        images = sample.get("image") or []
        for image in images if isinstance(images, list) else [images]:
            first_ids.setdefault(image, sample["id"])
    return [
        {"id": sample_id, "image": image, "conversations": [{"from": "human", "value": IMAGE_TOKEN}]}
        for image, sample_id in first_ids.items()
    ]
