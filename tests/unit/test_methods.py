"""The `method` config group (conf/method/): each names a sink strategy and an intervention that build, and
experiment=methods_table sweeps them all (but VAR on LLaVA-1.5-7B's sink dimensions, which the tiny base lacks)."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from sinkflow.config import CONF_DIR, compose_config

METHODS = sorted(path.stem for path in (CONF_DIR / "method").glob("*.yaml"))


@pytest.mark.parametrize("method", METHODS)
def test_each_method_builds_its_strategy_and_intervention(method):
    cfg = compose_config([f"method={method}"], config_name="evaluate")
    strategy = instantiate(cfg.sink_strategy.strategy)
    intervention = instantiate(cfg.intervention.intervention)
    assert (strategy.name, intervention.name) != ("none", "none") or method == "none"


def test_the_methods_table_sweeps_every_method_the_tiny_base_can_run():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(Path(CONF_DIR)), version_base="1.3"):
        hydra = compose(config_name="evaluate", overrides=["experiment=methods_table"], return_hydra_config=True).hydra
    assert str(hydra.mode) == "RunMode.MULTIRUN"
    assert sorted(hydra.sweeper.params.method.split(",")) == [m for m in METHODS if m != "var"]
    assert "efficiency/visual_tokens" in hydra.callbacks.sweep_table.metrics
