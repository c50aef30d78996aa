"""Linear probes: the logistic regression is optimal and exact on closed cases; sinks carry the background colour."""

import json
import math
import re

import pytest
import torch
from omegaconf import OmegaConf

from sinkflow.analysis import probe, scene_labels
from sinkflow.analysis.context import AnalysisContext
from sinkflow.caption import Caption
from sinkflow.shapes import generate_shapes
from sinkflow.sinks.strategies.none import NoneStrategy


def test_separable_classes_are_predicted_perfectly():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat(40)
    x = torch.randn(120, 5, generator=generator) * 0.3
    x[:, 0] += 10 * labels  # classes far apart along one direction, at a scale far from 1
    train, test = probe.split(120, 0.25, seed=0)
    fitted = probe.fit_logistic(x[train], labels[train], 3)
    assert (fitted.predict(x[test]) == labels[test]).all()
    scores = probe.probe_accuracy(x, [str(v) for v in labels.tolist()], train, test, l2=1e-2)
    assert scores["accuracy"] == 1.0 and scores["majority"] == pytest.approx(1 / 3, abs=0.1)


def test_fit_is_the_minimum_of_the_regularised_loss():
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(60, 4, generator=generator), torch.randint(0, 3, (60,), generator=generator)
    fitted = probe.fit_logistic(x, y, 3, l2=0.1)
    weight, bias = fitted.weight.clone().requires_grad_(), fitted.bias.clone().requires_grad_()
    z = (x.double() - fitted.mean) / fitted.scale
    probe.logistic_objective(z, y, weight, bias, 0.1).backward()
    assert weight.grad.abs().max() < 1e-5 and bias.grad.abs().max() < 1e-5


def test_two_symmetric_points_match_the_closed_form():
    # z = -1 -> class 0, z = +1 -> class 1: by symmetry W = [-a, a], b = 0, and the loss
    # softplus(-2a) + l2 a^2 is minimal where a = sigmoid(-2a) / l2 (solved here by bisection).
    l2 = 0.5
    low, high = 0.0, 10.0
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if mid < 1 / (1 + math.exp(2 * mid)) / l2 else (low, mid)
    fitted = probe.fit_logistic(torch.tensor([[-1.0], [1.0]]), torch.tensor([0, 1]), 2, l2=l2)
    torch.testing.assert_close(fitted.weight, torch.tensor([[-low, low]], dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(fitted.bias, torch.zeros(2, dtype=torch.float64), atol=1e-6, rtol=0)


def test_token_summaries_on_hand_made_features():
    features = torch.arange(2 * 4 * 2, dtype=torch.float32).view(2, 4, 2)
    sinks = torch.tensor([[True, False, False, True], [False, False, False, False]])
    valid = torch.tensor([[True, True, True, True], [True, True, True, False]])
    out = probe.token_summaries(features, sinks, valid, torch.Generator().manual_seed(0))
    assert out["sink_mean"][0].tolist() == [3.0, 4.0] and out["sink_mean"][1].isnan().all()
    assert out["nonsink_mean"].tolist() == [[3.0, 4.0], [10.0, 11.0]]
    assert out["nonsink_random"][0].tolist() in ([2.0, 3.0], [4.0, 5.0])  # a non-sink of image 0
    assert out["nonsink_random"][1].tolist() in ([8.0, 9.0], [10.0, 11.0], [12.0, 13.0])  # never the padding


def test_scene_labels_and_bad_settings(tmp_path):
    scene = {
        "background": "gray",
        "objects": [
            {"shape": "star", "color": "red", "cell": [0, 0], "box": [0, 0, 10, 10]},
            {"shape": "circle", "color": "red", "cell": [0, 1], "box": [20, 0, 32, 12]},
            {"shape": "square", "color": "blue", "cell": [1, 1], "box": [20, 20, 30, 30]},
        ],
    }
    reads = {name: target.read(scene) for name, target in scene_labels.SCENE_TARGETS.items()}
    assert reads == {"background": "gray", "count": "3", "dominant_color": "red", "largest_shape": "circle"}
    allowed = "('background', 'count', 'dominant_color', 'largest_shape')"
    with pytest.raises(ValueError, match=re.escape(f"`probe.targets` must be one of {allowed}, got 'lighting'")):
        scene_labels.check_target("lighting", "probe.targets")
    with pytest.raises(FileNotFoundError, match="probe.scenes: no scenes file at"):
        scene_labels.read_scenes(tmp_path / "scenes.json", "probe.scenes")


def test_sinks_beat_an_ordinary_token_on_background_colour(tmp_path, simulated_llava):
    """SIMULATED sinks (each image's mean feature) carry the global background colour better than one
    ordinary token does. The mean of the non-sinks is the same global summary in this simulation, so it is
    reported but not compared."""
    root = generate_shapes(tmp_path / "shapes", seed=0, n_train=200, n_eval=1)
    module = simulated_llava(NoneStrategy()).eval()
    settings = OmegaConf.create(
        {
            "targets": ["background"],
            "test_fraction": 0.3,
            "max_images": 200,
            "seed": 0,
            "scenes": str(root / "scenes.json"),
            "batch_size": 100,
            "l2": 1e-2,
        }
    )
    caption = Caption("tiny", "none", None, "shapes", True)
    ctx = AnalysisContext(module, lambda: iter([]), settings, tmp_path / "out", task="probe", caption=caption)
    summary = probe.run(ctx)
    scores = summary["accuracy"]["background"]
    assert summary["images"] == 200 and summary["images_without_sinks"] == 0
    assert scores["n_test"] == 60 and scores["majority"] < 0.5
    assert scores["sink_mean"] > scores["nonsink_random"] > scores["majority"]
    assert json.loads((tmp_path / "out" / "probe.json").read_text())["accuracy"]["background"] == scores
    assert (tmp_path / "out" / "probe.png").stat().st_size > 0
