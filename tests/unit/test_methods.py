"""The `method` config group (conf/method/): each names a sink strategy and an intervention that build, and
experiment=methods_table sweeps them all (but VAR on LLaVA-1.5-7B's sink dimensions, which the tiny base lacks, and
LSG, which evaluates a trained run); an intervention that must be trained first is never evaluated untrained."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from sinkflow.config import CONF_DIR, compose_config
from sinkflow.run import evaluation_module

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
    assert sorted(hydra.sweeper.params.method.split(",")) == [m for m in METHODS if m not in ("var", "lsg")]
    assert "efficiency/visual_tokens" in hydra.callbacks.sweep_table.metrics


def test_an_intervention_trained_first_is_not_evaluated_untrained():
    with pytest.raises(ValueError, match=r"intervention=lsg has parts that are trained first .* ckpt_path=<run>"):
        evaluation_module(compose_config(["intervention=lsg"], config_name="evaluate"))
    with pytest.raises(ValueError, match=r"`lsg_run` must be set for this experiment: the LSG run this row evaluates"):
        evaluation_module(compose_config(["experiment=methods_table", "method=lsg"], config_name="evaluate"))
    cfg = compose_config(["experiment=methods_table", "method=lsg", "lsg_run=runs/lsg/export"], config_name="evaluate")
    assert cfg.ckpt_path == "runs/lsg/export"
