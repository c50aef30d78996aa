"""Every figure draws what the JSON beside it says, and says what it is of.

Each plot function takes the summary its task writes (or the loss curves' JSON) and draws from it alone; these tests
build a summary by hand, draw it, and read the data back from the matplotlib artists (bar heights, line data, image
arrays, threshold lines). Every figure is titled with its caption (model, strategy, data) above the panels, in a
layout where the title overlaps none of them, and every plotted axis is labelled.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from matplotlib.collections import PolyCollection
from matplotlib.patches import StepPatch
from omegaconf import OmegaConf

from sinkflow.analysis import calibrate, decode, massive_dims, probe, propagation, relevance
from sinkflow.analysis.context import AnalysisContext
from sinkflow.caption import Caption
from sinkflow.loss_curves import loss_curves, plot_losses
from sinkflow.plotting import pyplot, titled
from sinkflow.sinks.detectors.norm_threshold import NormThreshold

plt = pyplot()
CAPTION = Caption("tiny_llava-0123", "none", "norm_threshold tau=100", "shapes-seed0", True).text("6 images")


@pytest.fixture()
def close_figures():
    yield
    plt.close("all")


def assert_titled(fig) -> None:
    """The caption is in the title (its lines may wrap), the title fits the figure's width and sits above every panel,
    every plotted axis has both labels."""
    assert " ".join(CAPTION.split()) in " ".join(fig.get_suptitle().split())
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    title = fig._suptitle.get_window_extent(renderer)
    assert 0 <= title.x0 and title.x1 <= fig.bbox.width, "the title runs past the figure's edges"
    for ax in fig.axes:
        assert title.y0 >= ax.get_tightbbox(renderer).y1 - 1, f"the title overlaps the panel {ax.get_title()!r}"
        if ax.axison and ax.get_label() != "<colorbar>":
            assert ax.get_xlabel() and ax.get_ylabel(), f"panel {ax.get_title()!r} has an unlabelled axis"


def test_the_caption_names_model_strategy_detector_data_and_simulated_sinks(tmp_path):
    local = tmp_path / "tiny_llava-4b39461b67"
    local.mkdir()
    module = SimpleNamespace(
        source=str(local), strategy=SimpleNamespace(name="dual_mlp"), detector=NormThreshold(tau=100.0)
    )
    shapes = SimpleNamespace(train_json=str(tmp_path / "shapes-seed0-n32" / "train.json"), eval_sets={"pope": None})
    caption = Caption.of(SimpleNamespace(**vars(module), simulated_sinks=object()), shapes)
    assert caption.text("6 images") == (
        "tiny_llava-4b39461b67 (SIMULATED sinks) · strategy dual_mlp · sinks: norm_threshold tau=100\n"
        "data shapes-seed0-n32 · 6 images"
    )
    hub = SimpleNamespace(source="llava-hf/llava-1.5-7b-hf", strategy=module.strategy, detector=None)
    benchmarks = SimpleNamespace(train_json=None, eval_sets={"pope": None, "mme": None})
    assert Caption.of(SimpleNamespace(**vars(hub), simulated_sinks=None), benchmarks).text("3 images") == (
        "llava-hf/llava-1.5-7b-hf · strategy dual_mlp\ndata pope+mme · 3 images"
    )
    assert Caption.of(SimpleNamespace(**vars(hub), simulated_sinks=None), None).data.startswith("loaders given to")


def test_propagation_bars_start_at_zero_and_the_line_breaks_across_empty_bins(close_figures):
    norms = torch.tensor([1.0, 2.0, 3.0, 7.0, 8.0, 31.0, 32.0, 33.0])  # bins [0, 5), [5, 10), [30, 35)
    attention = torch.tensor([0.010, 0.0098, 0.0102, 0.0099, 0.0101, 0.0105, 0.0107, 0.0103])
    vit_sink = norms > 30
    emerged = torch.zeros(8, dtype=torch.bool)
    summary = {
        "caption": CAPTION,
        "queries": "generated",
        "layers": [0, 2],
        "bin_width": 5.0,
        **propagation.summarise(norms, attention, vit_sink, emerged, 5.0),
    }
    fig = propagation.figure(summary)
    by_norm, by_type = fig.axes
    line = by_norm.containers[0].lines[0]  # the errorbar's data line
    bins = summary["bins"]
    assert [b["norm_from"] for b in bins] == [0.0, 5.0, 30.0]
    x, y = np.asarray(line.get_xdata(), dtype=float), np.asarray(line.get_ydata(), dtype=float)
    np.testing.assert_allclose(x, [2.5, 7.5, 20.0, 32.5])  # a gap point between 10 and 30
    np.testing.assert_allclose(y[[0, 1, 3]], [b["mean_attention_percent"] for b in bins])
    assert math.isnan(y[2])
    heights = [bar.get_height() for bar in by_type.patches]
    types = summary["mean_attention_percent"]
    assert heights == pytest.approx(
        [types["non_sink"]["mean_attention_percent"], types["vit_sink"]["mean_attention_percent"]]
    )
    # 1.05 % against 1.00 %: a linear axis from zero, so the bars differ by 5 %, not tenfold
    for ax in (by_norm, by_type):
        assert ax.get_yscale() == "linear" and ax.get_ylim()[0] == 0
    sem = types["vit_sink"]["sem_percent"]
    assert sem == pytest.approx(100 * attention[vit_sink].double().std().item() / math.sqrt(3))
    assert_titled(fig)


def massive_summary(massive_tokens: int, peak: float, dims: list[int] | None) -> dict:
    means = torch.rand(3, 2, 8, generator=torch.Generator().manual_seed(0)) * 30  # [layers, groups, D]
    return {
        "caption": CAPTION,
        "criterion": {"tau": 20.0, "min_layer": 1, "dims": dims},
        "visual_tokens": 96,
        "vit_sinks": 12,
        "peak": peak,
        "massive_tokens": massive_tokens,
        "heatmap": massive_dims.heatmap_data(means, torch.tensor([12.0, 84.0]), dims, k=2),
    }


@pytest.mark.parametrize("massive_tokens,peak,dims", [(5, 41.5, None), (0, 12.25, [3, 6])])
def test_massive_dims_heatmap_is_the_summary_with_tau_on_its_scale(close_figures, massive_tokens, peak, dims):
    summary = massive_summary(massive_tokens, peak, dims)
    data = summary["heatmap"]
    if dims is not None:
        assert data["dims"] == dims and "massive_dims.dims" in data["dims_chosen"]
    else:
        assert len(data["dims"]) >= 2 and "top 2 of each layer" in data["dims_chosen"]
    fig = massive_dims.figure(summary)
    images = [image for ax in fig.axes for image in ax.images]
    assert len(images) == 2
    for image, group in zip(images, ("vit_sinks", "non_sinks")):
        np.testing.assert_allclose(np.asarray(image.get_array()), np.array(data[group]))
        assert image.norm.vmin <= 20.0 <= image.norm.vmax  # tau is on the colour scale
    colorbar = fig.axes[-1]
    assert any(list(line.get_ydata()) == [20.0, 20.0] for line in colorbar.lines)  # tau marked on the colour bar
    title = " ".join(fig.get_suptitle().split())
    assert data["dims_chosen"] in title
    if massive_tokens:
        assert "5 massive tokens (max |h / rms(h)| = 41.5 > tau = 20)" in title
    else:
        assert "nothing is massive (max |h / rms(h)| = 12.2 <= tau = 20, dims [3, 6])" in title
    assert_titled(fig)


@pytest.mark.parametrize("heads", [1, 2])  # one map (the narrowest figure) or one per head
def test_relevance_maps_are_the_summary_panels_on_one_scale_with_a_colour_bar(close_figures, heads):
    generator = torch.Generator().manual_seed(0)
    panels = [
        {
            "image": f"eval_{i}.png",
            "kind": "sink",
            "feature": 5,
            "norm": 150.0,
            "cell": [1, 1],
            "maps": torch.rand(heads, 4, 4, generator=generator).softmax(dim=-1).tolist(),
        }
        for i in range(2)
    ]
    pictures = [np.zeros((64, 64, 3)) for _ in panels]
    fig = relevance.plot_relevance(panels, pictures, "ViT block 1: attention paid to the sink token", CAPTION)
    overlays = [image for ax in fig.axes if ax.get_label() != "<colorbar>" for image in ax.images[1:]]
    expected = [head for panel in panels for head in panel["maps"]]
    assert len(overlays) == len(expected) == 2 * heads
    top = max(np.max(m) for m in expected)
    for overlay, relevance_map in zip(overlays, expected):
        np.testing.assert_allclose(np.asarray(overlay.get_array()), np.array(relevance_map))
        assert (overlay.norm.vmin, overlay.norm.vmax) == (0, pytest.approx(top))  # one scale for every map
    colorbars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(colorbars) == 1 and "attention probability" in colorbars[0].get_ylabel()
    assert_titled(fig)


def test_decode_bars_are_the_top1_word_fractions_and_rank1_rates(close_figures):
    summary = {
        "caption": CAPTION,
        "images": 6,
        "tokens": {"sink": 12, "nonsink": 84},
        "top1_words": {"sink": [["the", 0.75], ["a", 0.25]], "nonsink": [["blue", 0.5], ["red", 0.3], ["of", 0.2]]},
        "main_object": {"label": "largest_shape", "rank1_rate": {"sink": 0.25, "nonsink": float("nan")}, "chance": 0.2},
    }
    fig = decode.plot_decode(summary)
    sink_ax, nonsink_ax, rank_ax = fig.axes
    for ax, kind in ((sink_ax, "sink"), (nonsink_ax, "nonsink")):
        drawn = {tick.get_text(): bar.get_width() for tick, bar in zip(ax.get_yticklabels(), ax.patches)}
        assert drawn == {repr(word): pytest.approx(f) for word, f in summary["top1_words"][kind]}
    assert [bar.get_height() for bar in rank_ax.patches] == [0.25, 0.0]  # NaN (no token of the kind) drawn as 0
    assert list(rank_ax.lines[0].get_ydata()) == [0.2, 0.2]  # chance
    assert_titled(fig)


def test_probe_bars_are_the_accuracy_table(close_figures):
    table = {
        "background": {
            "n_train": 70,
            "n_test": 30,
            "sink_mean": 0.9,
            "nonsink_mean": 0.8,
            "nonsink_random": 0.6,
            "majority": 0.3,
        },
        "count": {
            "n_train": 70,
            "n_test": 30,
            "sink_mean": 0.4,
            "nonsink_mean": 0.35,
            "nonsink_random": 0.3,
            "majority": 0.25,
        },
    }
    fig = probe.plot_probe({"caption": CAPTION, "accuracy": table})
    (ax,) = fig.axes
    heights = [bar.get_height() for bar in ax.patches]
    names = [*probe.TOKEN_TYPES, "majority"]
    assert heights == [table[target][name] for name in names for target in table]
    assert ax.get_ylim()[0] == 0
    assert_titled(fig)


@pytest.mark.parametrize("simulated", [True, False])
def test_calibration_figures_are_the_summary_and_say_when_sinks_are_simulated(close_figures, simulated):
    generator = torch.Generator().manual_seed(0)
    rows = [torch.cat([torch.rand(14, generator=generator) * 10 + 5, torch.tensor([150.0, 140.0])]) for _ in range(5)]
    summary = {
        "caption": CAPTION,
        "suggested_tau": 60.0,
        "configured_detector": {"mode": "norm_threshold", "tau": 100.0},
        **calibrate.figure_data(rows),
    }
    if simulated:
        summary["simulated_sinks"] = {"note": "SIMULATION"}
    histogram = calibrate.plot_norm_histogram(summary)
    (stairs,) = [p for p in histogram.axes[0].patches if isinstance(p, StepPatch)]
    values, edges, _ = stairs.get_data()
    np.testing.assert_allclose(values, summary["norm_histogram"]["counts"])
    np.testing.assert_allclose(edges, summary["norm_histogram"]["edges"])
    assert sum(summary["norm_histogram"]["counts"]) == 80
    thresholds = sorted(line.get_xdata()[0] for line in histogram.axes[0].lines)
    assert thresholds == [60.0, 100.0]
    ranked = calibrate.plot_sorted_norms(summary)
    ax = ranked.axes[0]
    median = [line for line in ax.lines if line.get_label() == "median over images"][0]
    np.testing.assert_allclose(median.get_ydata(), summary["sorted_norms"]["median"])
    np.testing.assert_allclose(median.get_ydata()[:2], [150.0, 140.0])
    (band,) = [c for c in ax.collections if isinstance(c, PolyCollection)]
    band_y = band.get_paths()[0].vertices[:, 1]
    assert band_y.max() == pytest.approx(max(summary["sorted_norms"]["q90"]))
    assert sorted(line.get_ydata()[0] for line in ax.lines if line is not median) == [60.0, 100.0]
    for fig in (histogram, ranked):
        assert ("the sinks are SIMULATED" in " ".join(fig.get_suptitle().split())) is simulated
        assert_titled(fig)


def test_loss_curves_are_the_json_beside_them(close_figures):
    curves = loss_curves([(1, 2.0), (2, 1.0), (3, 0.5)], [(3, 0.75)], CAPTION)
    assert curves["train_mean"] == {"window": 1, "loss": [2.0, 1.0, 0.5]}
    fig = plot_losses(curves)
    (ax,) = fig.axes
    raw, mean, val = ax.lines
    assert list(raw.get_xdata()) == [1, 2, 3] and list(raw.get_ydata()) == curves["train"]["loss"]
    assert list(mean.get_ydata()) == curves["train_mean"]["loss"]
    assert (list(val.get_xdata()), list(val.get_ydata())) == ([3], [0.75])
    assert_titled(fig)


def test_a_wrapped_title_keeps_every_name_of_the_caption_whole(close_figures):
    caption = "llava-hf/llava-1.5-7b-hf · strategy sink_front\ndata shapes-seed0-n1024-e60-px64 · 64 images"
    fig = titled(plt.figure(figsize=(1.5, 2)), "a narrow figure", caption)  # 20 characters across
    lines = fig.get_suptitle().splitlines()
    words = [word for line in lines for word in line.split()]
    assert len(lines) > 3 and "shapes-seed0-n1024-e60-px64" in words and "llava-hf/llava-1.5-7b-hf" in words
    assert " ".join(caption.split()) in " ".join(fig.get_suptitle().split())


def test_no_figure_is_drawn_without_its_caption(tmp_path):
    ctx = AnalysisContext(module=None, batches=lambda: iter(()), settings=OmegaConf.create({}), output_dir=tmp_path)
    with pytest.raises(ValueError, match="AnalysisContext.caption is not set"):
        ctx.figure_caption("6 images")
