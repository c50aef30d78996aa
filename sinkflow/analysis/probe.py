"""Linear probes (docs/paper.md#what-sinks-encode): how well image-level labels read out linearly from sink vs
non-sink ViT tokens.

The paper probes CLIP sinks for the object class (0.865) against non-sinks (0.512). Here every image gives three
feature vectors from its projector-input ViT features (`module.visual`, simulated sinks included when planted):
the mean of its sink patches, the mean of its non-sink patches, and one random non-sink patch. A multinomial
logistic regression (L2, L-BFGS, standardised features) is fitted per label on a seeded train split and scored on
the held-out rest, next to the majority-class baseline.

Labels come from the shapes dataset's `scenes.json` (`probe.scenes`): background colour, number of shapes,
dominant colour, largest shape. The images probed are those listed there (training and evaluation images), not
the evaluation questions: a probe needs hundreds of labelled images, more than the evaluation sets hold.
Images without a sink (by the configured detector) have no sink feature and are left out of every probe (counted).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.progress import track

from sinkflow.analysis.context import AnalysisContext
from sinkflow.analysis.scene_labels import SCENE_TARGETS, check_target, read_scenes
from sinkflow.analysis.task import ANALYSES, Analysis
from sinkflow.data.collate import load_image
from sinkflow.plotting import pyplot, titled

plt = pyplot()
log = logging.getLogger(__name__)

TOKEN_TYPES = ("sink_mean", "nonsink_mean", "nonsink_random")


@dataclass
class LogisticProbe:
    """A fitted multinomial logistic regression on standardised features."""

    weight: torch.Tensor  # [D, C]
    bias: torch.Tensor  # [C]
    mean: torch.Tensor  # [D]
    scale: torch.Tensor  # [D]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.double() - self.mean) / self.scale) @ self.weight + self.bias

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x).argmax(dim=-1)


def fit_logistic(
    x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float = 1e-2, max_iter: int = 200
) -> LogisticProbe:
    """Minimise mean cross-entropy + l2/2 * |W|^2 (bias unpenalised) with L-BFGS, in float64.

    Standardising first (train mean and std) makes one l2 fit features of any scale, e.g. sinks of norm 150.
    """
    x = x.double()
    mean, scale = x.mean(dim=0), x.std(dim=0, unbiased=False).clamp_min(1e-8)
    z = (x - mean) / scale
    weight = torch.zeros(z.shape[1], n_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-7,
        tolerance_change=1e-12,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def objective():
        optimizer.zero_grad()
        loss = logistic_objective(z, y, weight, bias, l2)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(objective)
    return LogisticProbe(weight.detach(), bias.detach(), mean, scale)


def logistic_objective(
    z: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, l2: float
) -> torch.Tensor:
    """The regularised loss `fit_logistic` minimises (exposed so tests can check its optimality)."""
    return torch.nn.functional.cross_entropy(z @ weight + bias, y) + 0.5 * l2 * weight.pow(2).sum()


def split(n: int, test_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random (train, test) index split; the test part has round(n * test_fraction) items, at least 1."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = min(max(1, round(n * test_fraction)), n - 1)
    return order[n_test:], order[:n_test]


def probe_accuracy(
    features: torch.Tensor, labels: list[str], train: torch.Tensor, test: torch.Tensor, l2: float
) -> dict[str, float]:
    """Held-out accuracy of a logistic probe and of the train split's majority class, for one feature set."""
    classes = sorted(set(labels))
    y = torch.tensor([classes.index(label) for label in labels])
    probe = fit_logistic(features[train], y[train], len(classes), l2=l2)
    majority = Counter(y[train].tolist()).most_common(1)[0][0]
    return {
        "accuracy": float((probe.predict(features[test]) == y[test]).double().mean()),
        "majority": float((y[test] == majority).double().mean()),
    }


def token_summaries(
    features: torch.Tensor, sinks: torch.Tensor, valid: torch.Tensor, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """Per image [n_images, D]: mean of its sink patches, mean of its non-sink patches, one random non-sink.

    Rows of images without a sink (or without a non-sink) are NaN in the affected summaries.
    """
    features = features.float()
    nonsinks = valid & ~sinks

    def mean_over(mask: torch.Tensor) -> torch.Tensor:
        total = (features * mask.unsqueeze(-1)).sum(dim=1)
        return total / mask.sum(dim=1, keepdim=True)  # 0/0 = NaN for an empty mask

    # One uniform draw per image among its non-sinks: the argmax of random scores restricted to them.
    scores = torch.rand(nonsinks.shape, generator=generator).to(features.device).masked_fill(~nonsinks, -1.0)
    chosen = features[torch.arange(len(features)), scores.argmax(dim=1)]
    chosen[~nonsinks.any(dim=1)] = float("nan")
    return {"sink_mean": mean_over(sinks & valid), "nonsink_mean": mean_over(nonsinks), "nonsink_random": chosen}


def probe_table(
    summaries: dict[str, torch.Tensor], labels: dict[str, list[str | None]], test_fraction: float, seed: int, l2: float
) -> dict[str, dict]:
    """{target: {token type: accuracy, ..., majority, n_train, n_test}} over the images every summary covers."""
    usable = torch.stack([~v.isnan().any(dim=1) for v in summaries.values()]).all(dim=0)
    table = {}
    for target, values in labels.items():
        keep = [i for i, v in enumerate(values) if v is not None and bool(usable[i])]
        if len(keep) < 4 or len({values[i] for i in keep}) < 2:
            raise ValueError(
                f"probe target {target!r}: {len(keep)} labelled images with sinks and "
                f"{len({values[i] for i in keep})} classes; raise probe.max_images"
            )
        kept_labels = [values[i] for i in keep]
        train, test = split(len(keep), test_fraction, seed)
        row: dict = {"n_train": len(train), "n_test": len(test)}
        for name, feats in summaries.items():
            scores = probe_accuracy(feats[keep].cpu(), kept_labels, train, test, l2)
            row[name] = scores["accuracy"]
            row["majority"] = scores["majority"]
        table[target] = row
    return table


def collect(module, paths: list[Path], batch_size: int, seed: int) -> tuple[dict[str, torch.Tensor], int]:
    """Token summaries of every image (in `paths` order) and how many images had no sink."""
    if module.detector is None:
        raise ValueError("the probe needs a ViT sink detector: set sink_strategy.detector")
    generator = torch.Generator().manual_seed(seed)
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in TOKEN_TYPES}
    without = 0
    chunks = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
    with torch.no_grad():
        for chunk in track(chunks, description=f"ViT features of {len(paths)} images"):
            inputs = module.processor.image_processor([load_image(str(p)) for p in chunk], return_tensors="pt")
            visual = module.visual({k: v.to(module.device) for k, v in inputs.items()})
            sinks = visual.patch_sinks(module.detector)
            without += int((~(sinks & visual.valid()).any(dim=1)).sum())
            for name, values in token_summaries(visual.features, sinks, visual.valid(), generator).items():
                parts[name].append(values.cpu())
    return {name: torch.cat(values) for name, values in parts.items()}, without


def plot_probe(summary: dict) -> plt.Figure:
    """Grouped bars from zero: held-out accuracy per target for each token type, with the majority-class baseline,
    drawn from the summary alone."""
    table = summary["accuracy"]
    bars = (*TOKEN_TYPES, "majority")
    colors = {"sink_mean": "tab:red", "nonsink_mean": "tab:blue", "nonsink_random": "tab:cyan", "majority": "0.6"}
    targets = list(table)
    fig, ax = plt.subplots(figsize=(3 + 1.9 * len(targets), 4.5))
    width = 0.8 / len(bars)
    for b, name in enumerate(bars):
        xs = np.arange(len(targets)) + (b - (len(bars) - 1) / 2) * width
        drawn = ax.bar(
            xs,
            [table[t][name] for t in targets],
            width,
            label=name,
            color=colors[name],
            hatch="//" if name == "majority" else None,
        )
        ax.bar_label(drawn, fmt="%.2f", fontsize=7)
    ax.set_xticks(np.arange(len(targets)), [f"{t}\n({table[t]['n_test']} held out)" for t in targets])
    ax.set_ylim(0, 1.25)  # headroom for the legend above the bars
    ax.set_xlabel("image label probed")
    ax.set_ylabel("held-out accuracy (fraction, 0-1)")
    ax.legend(fontsize=8, loc="upper center", ncol=len(bars))
    return titled(fig, "linear probes of image labels from ViT tokens", summary["caption"])


def run(ctx: AnalysisContext) -> dict:
    """Sink vs non-sink linear probes on the images of `probe.scenes`."""
    settings = ctx.settings
    for name in settings.targets:
        check_target(name, "probe.targets")
    if not 0 < settings.test_fraction < 1:
        raise ValueError(f"probe.test_fraction must be in (0, 1), got {settings.test_fraction}")
    scenes_path = Path(settings.scenes)
    scenes = read_scenes(scenes_path, "probe.scenes")
    relative = sorted(scenes)
    order = torch.randperm(len(relative), generator=torch.Generator().manual_seed(settings.seed))
    chosen = [relative[i] for i in order[: settings.max_images].tolist()]
    summaries, without = collect(
        ctx.module, [scenes_path.parent / r for r in chosen], settings.batch_size, settings.seed
    )
    labels = {t: [SCENE_TARGETS[t].read(scenes[r]) for r in chosen] for t in settings.targets}
    table = probe_table(summaries, labels, settings.test_fraction, settings.seed, settings.l2)
    if without:
        log.warning("probe: %d of %d images have no sink by the detector and are left out", without, len(chosen))
    summary = {
        "caption": ctx.figure_caption(
            f"{len(chosen) - without} of {len(chosen)} images of {scenes_path.parent.name} probed"
        ),
        "model": ctx.module.source,
        "images": len(chosen),
        "images_without_sinks": without,
        "simulated_sinks": ctx.module.simulated_sinks is not None,
        "accuracy": table,
    }
    return ctx.write(summary, {"probe": plot_probe(summary)})


ANALYSES.register("probe", Analysis(run))
