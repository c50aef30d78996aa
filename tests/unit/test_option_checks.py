"""Every numeric option is checked where its object is built, and the error names the option's config key.

The detector's options are in test_detect.py; the early `validate` checks of model.lora / model.optim and one
check through Hydra instantiation of the real configs are in test_configs.py.
"""

import re
from functools import partial

import pytest
import torch

from sinkflow.data.datamodule import LVLMDataModule
from sinkflow.divergence import DivergenceGuard
from sinkflow.models.build import LoraSpec
from sinkflow.models.encoders import SentenceEncoder
from sinkflow.module import GenerationSpec, OptimSpec
from sinkflow.sinks.calibrate import summarise
from sinkflow.sinks.simulated import SimulatedSinks
from sinkflow.sinks.strategies.cot_route import CotRoute
from sinkflow.sinks.strategies.random_control import RandomControl
from sinkflow.sinks.strategies.reweight import Reweight

NORMS = torch.tensor([[1.0, 2.0, 300.0]])
# cot_route's prompts have no default (conf/routing/ configures them); any valid pair builds it.
cot_route = partial(CotRoute, "Symbolic or real-world?", "Global or local: {question}")


def data(**options) -> LVLMDataModule:
    return LVLMDataModule(train_json=None, image_root=None, **options)


# (what is built, its arguments, the exact message). Every check runs before anything loads: the reweight and
# encoder rows fail before looking for an encoder.
CASES = [
    (SimulatedSinks, {"k": 0}, "`model.simulated_sinks.k` must be an integer >= 1, got 0"),
    (SimulatedSinks, {"k": 1.5}, "`model.simulated_sinks.k` must be an integer >= 1, got 1.5"),
    (SimulatedSinks, {"norm": 0.0}, "`model.simulated_sinks.norm` must be a number > 0, got 0.0"),
    (SimulatedSinks, {"norm": float("inf")}, "`model.simulated_sinks.norm` must be a number > 0, got inf"),
    (cot_route, {"max_new_tokens": 0}, "`sink_strategy.strategy.max_new_tokens` must be an integer >= 1, got 0"),
    (cot_route, {"max_new_tokens": "8"}, "`sink_strategy.strategy.max_new_tokens` must be an integer >= 1, got '8'"),
    (RandomControl, {"seed": -1}, "`sink_strategy.strategy.seed` must be an integer >= 0, got -1"),
    (RandomControl, {"seed": 0.5}, "`sink_strategy.strategy.seed` must be an integer >= 0, got 0.5"),
    (Reweight, {"hidden": 0}, "`sink_strategy.strategy.hidden` must be an integer >= 1, got 0"),
    (Reweight, {"cache_size": -1}, "`sink_strategy.strategy.cache_size` must be an integer >= 0, got -1"),
    (SentenceEncoder, {"cache_size": None}, "`sink_strategy.strategy.cache_size` must be an integer >= 0, got None"),
    (LoraSpec, {"r": 0}, "`model.lora.r` must be an integer >= 1, got 0"),
    (LoraSpec, {"alpha": -16}, "`model.lora.alpha` must be a number > 0, got -16"),
    (LoraSpec, {"dropout": 1.0}, "`model.lora.dropout` must be a number >= 0 and < 1, got 1.0"),
    (LoraSpec, {"dropout": -0.1}, "`model.lora.dropout` must be a number >= 0 and < 1, got -0.1"),
    (lambda **kw: summarise(NORMS, **kw), {"min_ratio": 1}, "`calibrate.min_ratio` must be a number > 1, got 1"),
    (OptimSpec, {"lr": 0}, "`model.optim.lr` must be a number > 0, got 0"),
    (OptimSpec, {"betas": (0.9, 1.0)}, "`model.optim.betas[1]` must be a number >= 0 and < 1, got 1.0"),
    (GenerationSpec, {"max_new_tokens": 0}, "`model.generation.max_new_tokens` must be an integer >= 1, got 0"),
    (DivergenceGuard, {"max_bad_steps": -1}, "`divergence.max_bad_steps` must be an integer >= 0, got -1"),
    (data, {"batch_size": 0}, "`dataset.batch_size` must be an integer >= 1, got 0"),
    (data, {"eval_batch_size": 2.5}, "`dataset.eval_batch_size` must be an integer >= 1, got 2.5"),
    (data, {"num_workers": -1}, "`dataset.num_workers` must be an integer >= 0, got -1"),
    (data, {"val_fraction": 1.0}, "`dataset.val_fraction` must be a number >= 0 and < 1, got 1.0"),
    (data, {"max_length": 0}, "`dataset.max_length` must be an integer >= 1 or null, got 0"),
    (data, {"limit_train": 0}, "`dataset.limit_train` must be an integer >= 1 or null, got 0"),
    (data, {"limit_eval": 0}, "`dataset.limit_eval` must be an integer >= 1 or null, got 0"),
]


@pytest.mark.parametrize(
    "build,kwargs,message", CASES, ids=[m.split("`")[1] + f"={v!r}" for _, kw, m in CASES for v in kw.values()]
)
def test_a_bad_number_names_its_config_key(build, kwargs, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        build(**kwargs)


def test_the_boundaries_themselves_are_accepted():
    assert SimulatedSinks(k=1, norm=1e-3).k == 1
    assert cot_route(max_new_tokens=1).max_new_tokens == 1
    assert RandomControl(seed=0).seed == 0
    assert LoraSpec(r=1, alpha=0.5, dropout=0.0).alpha == 0.5
    assert summarise(NORMS, min_ratio=1.5)["adaptive_drop"]["min_ratio"] == 1.5


def test_reweight_with_a_zero_cache_still_builds(tiny_encoder):
    assert Reweight(encoder=tiny_encoder, hidden=1, cache_size=0).encoder.cache_size == 0


def test_an_evaluation_with_no_set_is_an_error():
    """Every set configured away (`dataset.eval_sets.<name>=null`): nothing to evaluate is not a success."""
    with pytest.raises(ValueError, match=r"^dataset.eval_sets names no evaluation set: there is nothing to evaluate"):
        data(eval_sets={"pope": None}).setup("test")
