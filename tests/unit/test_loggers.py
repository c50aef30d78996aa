"""A job's loggers: W&B runs named and grouped after the Hydra job, one finished run per job, and the
logger=tensorboard / many_loggers configs writing what they are sent."""

from __future__ import annotations

import struct

import pytest
from omegaconf import OmegaConf

from sinkflow.config import compose_config
from sinkflow.job import job
from sinkflow.loggers import build_loggers, close_job_loggers, log_config
from sinkflow.wandb_logger import JobWandbLogger, job_group, job_name


def test_a_run_is_named_after_the_job_overrides_and_grouped_by_its_sweep():
    assert job_name(["model.optim.lr=1e-3", "seed=1"], "train") == "model.optim.lr=1e-3,seed=1"
    assert job_name([], "evaluate") == "evaluate"  # no overrides: the task
    sweep = "logs/train/multiruns/2026-12-01_10-00-00"
    assert job_group(True, sweep, None, "train") == "train/2026-12-01_10-00-00"
    assert job_group(True, sweep, "training_free_sweep", "evaluate") == "training_free_sweep/2026-12-01_10-00-00"
    assert job_group(False, sweep, "diysink_rew", "train") == "diysink_rew"
    assert job_group(False, sweep, None, "train") is None


def wandb_config(tmp_path, **options) -> dict:
    """The `logger` group of a job logging to W&B offline under `tmp_path`."""
    node = {"_target_": "sinkflow.wandb_logger.JobWandbLogger", "project": "sinkflow", "job_type": "train"}
    return {"logger": {"wandb": {**node, "save_dir": str(tmp_path), "offline": True, **options}}}


def test_each_job_of_a_process_logs_into_its_own_finished_run(tmp_path, hermetic_env, wandb_offline_runs):
    """Two jobs in one process (a multirun): before, the second job's logger reused the first job's W&B run (one run
    with both configs, and none for the second job)."""

    @job
    def task(cfg):
        loggers = build_loggers(cfg)
        log_config(loggers, cfg)
        for logger in loggers:
            logger.log_metrics({"job/lr": cfg.lr}, step=0)
        if cfg.lr > 1:
            raise RuntimeError("diverged")

    for i, lr in enumerate((0.001, 0.002)):
        task(OmegaConf.create({"lr": lr, **wandb_config(tmp_path / str(i), name=f"lr={lr}")}))
    with pytest.raises(RuntimeError, match="diverged"):
        task(OmegaConf.create({"lr": 10.0, **wandb_config(tmp_path / "2", name="lr=10")}))
    runs = [wandb_offline_runs(tmp_path / str(i)) for i in range(3)]
    assert [len(found) for found in runs] == [1, 1, 1]
    assert [found[0].name for found in runs] == ["lr=0.001", "lr=0.002", "lr=10"]
    assert [found[0].config["lr"] for found in runs] == [0.001, 0.002, 10.0]
    assert [found[0].exit_code for found in runs] == [0, 0, 1]  # finished, the failed job with its error
    assert all(found[0].job_type == "train" and "job/lr" in found[0].logged for found in runs)


@pytest.fixture()
def hydra_job():
    """`hydra_job(overrides, multirun)`: make the Hydra job of train.py with `overrides` the running one (as
    `@hydra.main` does), the sweep in /sweeps/2026-12-01_10-00-00; none afterwards."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from sinkflow.config import CONF_DIR

    def start(overrides: list[str], multirun: bool) -> None:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            sweep = ["hydra.sweep.dir=/sweeps/2026-12-01_10-00-00"]
            cfg = compose("train", overrides=overrides + sweep, return_hydra_config=True)
        cfg.hydra.mode = RunMode.MULTIRUN if multirun else RunMode.RUN
        HydraConfig.instance().set_config(cfg)

    yield start
    HydraConfig.instance().cfg = None


def test_the_wandb_logger_takes_its_name_and_group_from_the_hydra_job(tmp_path, hermetic_env, hydra_job):
    hydra_job(["experiment=training_free_sweep", "model.optim.lr=0.001"], multirun=True)
    logger = JobWandbLogger(save_dir=str(tmp_path), offline=True, job_type="training_free_sweep")
    options = logger._wandb_init
    assert options["name"] == "experiment=training_free_sweep,model.optim.lr=0.001"
    assert options["group"] == "training_free_sweep/2026-12-01_10-00-00"
    # Lightning passes `anonymous=None`, which W&B answers with "The anonymous setting has no effect".
    assert "anonymous" not in options
    hydra_job([], multirun=False)
    options = JobWandbLogger(save_dir=str(tmp_path), offline=True, job_type="train", name="baseline")._wandb_init
    assert options["name"] == "baseline" and options["group"] is None and options["job_type"] == "train"


def tensorboard_scalars(path) -> dict[str, float]:
    """The scalars of a TensorBoard event file (TFRecord framing: length, its CRC, the Event, its CRC)."""
    from tensorboardX.proto.event_pb2 import Event

    data, position, scalars = path.read_bytes(), 0, {}
    while position < len(data):
        (length,) = struct.unpack("<Q", data[position : position + 8])
        event = Event()
        event.ParseFromString(data[position + 12 : position + 12 + length])
        position += 12 + length + 4
        scalars.update({value.tag: value.simple_value for value in event.summary.value})
    return scalars


def test_many_loggers_writes_csv_tensorboard_and_wandb(tmp_path, hermetic_env, wandb_offline_runs):
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    cfg = compose_config(["logger=many_loggers", f"paths.output_dir={tmp_path}"])
    loggers = build_loggers(cfg)
    assert [type(logger) for logger in loggers] == [CSVLogger, TensorBoardLogger, JobWandbLogger]
    log_config(loggers, cfg)
    for logger in loggers:
        logger.log_metrics({"test/open/accuracy": 0.75}, step=3)
    close_job_loggers("success")
    assert (tmp_path / "csv" / "version_0" / "metrics.csv").read_text().split() == ["step,test/open/accuracy", "3,0.75"]
    (events,) = (tmp_path / "tensorboard" / "version_0").glob("events.out.tfevents.*")
    assert tensorboard_scalars(events)["test/open/accuracy"] == 0.75
    assert "model" in (tmp_path / "tensorboard" / "version_0" / "hparams.yaml").read_text()
    (run,) = wandb_offline_runs(tmp_path / "wandb")
    assert run.exit_code == 0 and "test/open/accuracy" in run.logged and run.config["model"]["family"]
