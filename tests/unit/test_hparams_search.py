"""`hparams_search=tiny_optuna`: an Optuna search over keys the training config has, and the value train.py returns
to the sweeper (an error naming the metrics when a search asks for one the run did not measure)."""

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from sinkflow.config import CONF_DIR
from sinkflow.run import optimized_value


def composed(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


@pytest.fixture()
def hydra_config():
    """`hydra_config(overrides)`: the train config as a job sees it (HydraConfig set), reset afterwards."""

    def set_config(overrides: list[str]):
        cfg = composed(overrides)
        HydraConfig.instance().set_config(cfg)
        return cfg

    yield set_config
    HydraConfig.instance().cfg = None


def test_the_optuna_example_searches_keys_of_the_training_config():
    cfg = composed(["hparams_search=tiny_optuna"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN" and sweeper.direction == "maximize"
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed == cfg.seed
    assert dict(sweeper.params) == {
        "model.lora.r": "choice(4, 8, 16, 32)",
        "model.optim.lr": "tag(log, interval(1e-4, 1e-2))",
        "model.optim.projector_lr": "tag(log, interval(1e-4, 1e-2))",
        "sink_strategy.detector.tau": "interval(50.0, 200.0)",
    }
    for key in sweeper.params:  # a misspelt key would only fail once the first trial composes
        assert OmegaConf.select(cfg, key) is not None, key
    assert cfg.optimized_metric == "all/global/accuracy"


def test_train_returns_the_optimized_metric(hydra_config):
    cfg = hydra_config(["hparams_search=tiny_optuna"])
    assert optimized_value(cfg, {"all/global/accuracy": 0.25, "all/local/accuracy": 0.5}) == 0.25


def test_a_search_for_a_metric_the_run_did_not_measure_names_the_closest(hydra_config):
    cfg = hydra_config(["hparams_search=tiny_optuna", "optimized_metric=all/global/acc"])
    with pytest.raises(
        ValueError,
        match=r"optimized_metric=all/global/acc is not among this run's 2 metrics, and the "
        r"optuna sweeper optimises it; closest: \['all/global/accuracy'",
    ):
        optimized_value(cfg, {"all/global/accuracy": 0.25, "pope/f1_mean": 0.5})
    with pytest.raises(ValueError, match=r"closest: none \(did the run test\? test=true\)"):
        optimized_value(cfg, {})


def test_a_grid_sweep_or_a_single_run_without_the_metric_returns_none(hydra_config):
    assert optimized_value(hydra_config(["optimized_metric=absent"]), {"all/global/accuracy": 0.25}) is None
    HydraConfig.instance().cfg = None
    assert optimized_value(composed(["optimized_metric=absent"]), {}) is None
