"""`debug=default|fdr|limit|overfit|profiler` (conf/debug/): what each sets, that the command line still wins, and
that evaluate.py refuses the one that only trains."""

import pytest
from hydra.utils import instantiate
from lightning.pytorch import Trainer
from lightning.pytorch.profilers import SimpleProfiler
from omegaconf import OmegaConf
from torch.utils.data import SequentialSampler

from sinkflow.config import CONF_DIR, compose_config
from sinkflow.data.datamodule import LVLMDataModule
from sinkflow.data.templates import VicunaV1
from sinkflow.models.tiny import TinyLlavaSpec, build_tiny_llava
from sinkflow.run import evaluate

OPTIONS = sorted(path.stem for path in (CONF_DIR / "debug").glob("*.yaml"))
# What each option sets on top of debug/default (Lightning Trainer arguments, and sinkflow's `test`).
EXPECTED = {
    "default": {},
    "fdr": {"fast_dev_run": True},
    "limit": {"max_epochs": 3, "limit_train_batches": 4, "limit_val_batches": 2, "limit_test_batches": 2},
    "overfit": {"max_epochs": 20, "overfit_batches": 3},
    "profiler": {},
}


def test_every_option_is_described():
    assert OPTIONS == sorted(EXPECTED)


@pytest.mark.parametrize("option", OPTIONS)
def test_debug_runs_one_cpu_process_with_anomaly_detection_and_no_logger(option):
    # from a GPU DDP setup with W&B's default logger group left in place: debug overrides them
    cfg = compose_config([f"debug={option}", "trainer=ddp"])
    trainer = OmegaConf.to_container(cfg.trainer)
    assert cfg.task_name == "debug" and not cfg.logger and cfg.dataset.num_workers == 0
    assert {k: trainer[k] for k in ("accelerator", "devices", "num_nodes", "strategy", "precision")} == {
        "accelerator": "cpu",
        "devices": 1,
        "num_nodes": 1,
        "strategy": "auto",
        "precision": "32-true",
    }
    assert trainer["detect_anomaly"] is True
    expected = {"max_epochs": 1, **EXPECTED[option]}
    assert {k: trainer[k] for k in expected} == expected
    assert cfg.test is (option != "overfit")


def test_the_command_line_wins_over_debug():
    cfg = compose_config(["debug=fdr", "logger=csv", "trainer.max_epochs=2"])
    assert list(cfg.logger) == ["csv"] and cfg.trainer.max_epochs == 2 and cfg.trainer.fast_dev_run is True


def test_profiler_writes_into_the_run_directory(tmp_path):
    cfg = compose_config(["debug=profiler", f"paths.output_dir={tmp_path}"])
    profiler = instantiate(cfg.trainer.profiler)
    assert isinstance(profiler, SimpleProfiler)
    assert (profiler.dirpath, profiler.filename) == (str(tmp_path), "profile")


def test_the_old_trainer_debug_still_composes():
    assert compose_config(["trainer=debug"]).trainer.fast_dev_run is True


@pytest.mark.parametrize("option", [o for o in OPTIONS if o != "overfit"])
def test_evaluate_takes_the_debug_options_that_test(option):
    cfg = compose_config([f"debug={option}"], config_name="evaluate")
    assert cfg.task_name == "debug" and cfg.trainer.detect_anomaly is True


def test_evaluate_refuses_overfit_before_loading_anything():
    cfg = compose_config(["debug=overfit"], config_name="evaluate")
    with pytest.raises(ValueError, match=r"trainer.overfit_batches \(debug=overfit\) .* evaluate.py does not train"):
        evaluate(cfg)


def test_overfitting_reads_the_first_training_batches_in_order(shapes_root):
    # Lightning keeps a loader with a SequentialSampler as it is; any other sampler it rebuilds, which
    # ResumableLoader (the usual training loader) cannot be.
    _, processor = build_tiny_llava(TinyLlavaSpec())
    data = LVLMDataModule(
        str(shapes_root / "train.json"), str(shapes_root), batch_size=4, val_fraction=0.1, limit_train=16, seed=3
    ).bind(processor, VicunaV1())
    data.setup("fit")
    data.trainer = Trainer(overfit_batches=2, logger=False, enable_checkpointing=False, accelerator="cpu")
    loader = data.train_dataloader()
    assert isinstance(loader.sampler, SequentialSampler)
    first, again = ([meta["id"] for batch in loader for meta in batch["meta"]] for _ in range(2))
    assert first == again == [sample["id"] for sample in data.train_set]
