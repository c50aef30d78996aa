"""The sink detector on hand-made tensors with known answers."""

import re

import pytest
import torch

from sinkflow.sinks.detectors.adaptive_drop import AdaptiveDrop
from sinkflow.sinks.detectors.base import token_norms
from sinkflow.sinks.detectors.norm_threshold import NormThreshold
from sinkflow.sinks.detectors.topk import TopK


def with_norms(rows: list[list[float]], dim: int = 8) -> torch.Tensor:
    """Features [n_images, N, dim] whose token norms are exactly `rows` (norm spread over two channels)."""
    norms = torch.tensor(rows, dtype=torch.float64)
    features = torch.zeros(*norms.shape, dim, dtype=torch.float64)
    features[..., 0] = norms * 0.6
    features[..., 3] = norms * 0.8
    return features


def mask(rows):
    return torch.tensor(rows, dtype=torch.bool)


def test_norm_threshold_is_inclusive_and_counts_vary_per_image():
    features = with_norms([[1, 150, 100, 99.9], [1, 2, 3, 4], [101, 200, 300, 400]])
    got = NormThreshold(tau=100)(features)
    assert torch.equal(got, mask([[0, 1, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]]))


def test_topk_breaks_ties_by_token_order_and_clips_k():
    features = with_norms([[5, 7, 7, 7], [9, 1, 2, 3]])
    assert torch.equal(TopK(k=2)(features), mask([[0, 1, 1, 0], [1, 0, 0, 1]]))
    assert TopK(k=10)(features).all()


def test_adaptive_drop_cuts_at_the_largest_relative_drop():
    features = with_norms([[10, 200, 180, 9, 11], [5, 5, 5, 5, 5], [1, 1, 50, 1, 1], [4, 3, 2.5, 2, 1.9]])
    got = AdaptiveDrop(min_ratio=2.0)(features)
    # Image 0: sorted 200,180,11,10,9 -> largest ratio 180/11 -> two sinks. Image 1: flat -> none.
    # Image 2: one outlier. Image 3: largest ratio 4/3 < 2 -> none.
    assert torch.equal(got, mask([[0, 1, 1, 0, 0], [0, 0, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 0]]))


def test_cap_keeps_the_highest_norms_first():
    features = with_norms([[150, 300, 200, 1], [150, 150, 150, 1], [1, 2, 3, 4]])
    got = NormThreshold(tau=100, max_sinks=2)(features)
    assert torch.equal(got, mask([[0, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]]))
    assert not TopK(k=3, max_sinks=0)(features).any()


def test_norms_are_float32_even_for_bf16_features():
    # Channels 40 and 91.5 are exact in bf16; the true norm 99.861 rounds to 100.0 in a bf16 reduction.
    features = torch.tensor([[[40.0, 91.5], [0.0, 100.0]]], dtype=torch.bfloat16)
    assert torch.linalg.vector_norm(features, dim=-1)[0, 0] == 100.0  # the trap
    norms = token_norms(features)
    assert norms.dtype == torch.float32
    torch.testing.assert_close(norms, torch.tensor([[99.8612, 100.0]]), atol=1e-4, rtol=0)
    assert torch.equal(NormThreshold(tau=100)(features), mask([[0, 1]]))


@pytest.mark.parametrize(
    "detector,kwargs,message",
    [
        # Before, tau <= 0 made every token a sink and k = 0 found none, silently.
        (NormThreshold, {"tau": -1}, "`sink_strategy.detector.tau` must be a number > 0, got -1"),
        (NormThreshold, {"tau": 0}, "`sink_strategy.detector.tau` must be a number > 0, got 0"),
        (NormThreshold, {"tau": "100"}, "`sink_strategy.detector.tau` must be a number > 0, got '100'"),
        (NormThreshold, {"tau": float("nan")}, "`sink_strategy.detector.tau` must be a number > 0, got nan"),
        (TopK, {"k": 0}, "`sink_strategy.detector.k` must be an integer >= 1, got 0"),
        (TopK, {"k": 2.5}, "`sink_strategy.detector.k` must be an integer >= 1, got 2.5"),
        (AdaptiveDrop, {"min_ratio": 1.0}, "`sink_strategy.detector.min_ratio` must be a number > 1, got 1.0"),
        (
            NormThreshold,
            {"max_sinks": -2},
            "`sink_strategy.detector.max_sinks` must be an integer >= 0 or null, got -2",
        ),
        (TopK, {"max_sinks": 1.5}, "`sink_strategy.detector.max_sinks` must be an integer >= 0 or null, got 1.5"),
    ],
)
def test_bad_settings_name_the_key(detector, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        detector(**kwargs)


def test_an_option_of_another_rule_is_refused():
    """One class per rule: `k` on the threshold rule is a mistake, not an ignored setting."""
    with pytest.raises(TypeError, match="unexpected keyword argument 'k'"):
        NormThreshold(k=4)


def test_boundary_settings_are_accepted():
    assert (NormThreshold(tau=1e-6).tau, TopK(k=1).k, AdaptiveDrop(min_ratio=1.001).min_ratio) == (1e-6, 1, 1.001)
    assert TopK(k=1, max_sinks=0).max_sinks == 0


def test_every_detector_config_builds_its_registered_rule():
    """conf/sink_strategy/detector/<name>.yaml and the registry agree both ways."""
    from pathlib import Path

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from sinkflow.sinks.detectors.base import DETECTORS

    folder = Path(__file__).resolve().parents[2] / "conf" / "sink_strategy" / "detector"
    configs = {path.stem: instantiate(OmegaConf.load(path)) for path in folder.glob("*.yaml")}
    assert len(DETECTORS) >= 3 and set(configs) == set(DETECTORS)
    for name, detector in configs.items():
        assert type(detector) is DETECTORS[name] and detector.name == name


def test_ragged_rows_never_mark_padding_and_rank_within_each_image():
    features = torch.zeros(2, 5, 3)
    features[0, :, 0] = torch.tensor([1.0, 9.0, 2.0, 8.0, 3.0])
    features[1, :3, 0] = torch.tensor([4.0, 1.0, 1.5])  # two padded rows after 3 patches
    topk = TopK(k=4)(features, lengths=[5, 3])
    assert topk.tolist() == [[False, True, True, True, True], [True, True, True, False, False]]
    adaptive = AdaptiveDrop(min_ratio=2.0)(features, lengths=[5, 3])
    assert adaptive.tolist() == [[False, True, False, True, False], [True, False, False, False, False]]
