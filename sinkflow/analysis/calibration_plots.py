"""Figures of a calibration run: the log-norm histogram and the per-image sorted-norm curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def _finish(fig, ax, path: Path, labels: tuple[str, str], title: str, lines: dict[str, float | None],
            vertical: bool) -> None:
    """Log-log axes, labels, the threshold lines (vertical on the norm axis), legend; save and close."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_title(title)
    for (label, value), color in zip(lines.items(), ("tab:red", "tab:green")):
        if value is not None:
            (ax.axvline if vertical else ax.axhline)(value, color=color, linestyle="--", label=f"{label} = {value:.3g}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_norm_histogram(norms: torch.Tensor, path: Path, lines: dict[str, float | None], title: str) -> None:
    """Histogram of all token norms on log-log axes, with the threshold(s) marked."""
    values = norms.flatten().float().clamp_min(1e-6).numpy()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(values, bins=np.logspace(np.log10(values.min()), np.log10(values.max()) + 1e-3, 120), color="tab:blue")
    _finish(fig, ax, path, ("token L2 norm (projector input)", "tokens"), title, lines, vertical=True)


def plot_sorted_norms(norms: list[torch.Tensor], path: Path, lines: dict[str, float | None], title: str) -> None:
    """Each image's norms sorted in descending order (faint), their median (bold), the threshold(s)."""
    ranked = [row.float().sort(descending=True).values.numpy() for row in norms]
    fig, ax = plt.subplots(figsize=(7, 4))
    for row in ranked[:200]:
        ax.plot(np.arange(1, len(row) + 1), row, color="tab:blue", alpha=0.08, linewidth=0.8)
    shortest = min(len(row) for row in ranked)  # the median over images runs over the ranks every image has
    ax.plot(np.arange(1, shortest + 1), np.median([row[:shortest] for row in ranked], axis=0), color="black",
            linewidth=2, label="median over images")
    _finish(fig, ax, path, ("rank within the image", "token L2 norm"), title, lines, vertical=False)
