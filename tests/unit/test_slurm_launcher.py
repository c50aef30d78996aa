"""`hydra/launcher=slurm`: the submitit SLURM launcher with sinkflow's resources, one task per device of the trainer
(Lightning's SLURMEnvironment makes each a DDP rank) and the nodes the trainer spans."""

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf.errors import InterpolationResolutionError

from sinkflow.config import CONF_DIR


def launcher(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", *overrides], return_hydra_config=True)
    return cfg.hydra.launcher


def test_a_multi_node_ddp_job_asks_for_a_task_per_gpu_on_every_node():
    slurm = launcher(
        [
            "trainer=ddp",
            "trainer.devices=4",
            "trainer.num_nodes=2",
            "hydra.launcher.partition=gpu",
            "hydra.launcher.timeout_min=720",
            "hydra.sweep.dir=/sweeps/s",
        ]
    )
    built = instantiate(slurm)  # the plugin's SlurmLauncher, with what it will pass to submitit's sbatch
    assert type(built).__name__ == "SlurmLauncher"
    assert {k: built.params[k] for k in ("nodes", "tasks_per_node", "gpus_per_node", "partition", "timeout_min")} == {
        "nodes": 2,
        "tasks_per_node": 4,
        "gpus_per_node": 4,
        "partition": "gpu",
        "timeout_min": 720,
    }
    assert built.params["submitit_folder"] == "/sweeps/s/slurm/%j"  # SLURM's logs, one folder per job id


def test_a_cpu_job_asks_for_no_gpu():
    slurm = launcher([])  # trainer=cpu: one device, one node
    assert (slurm.nodes, slurm.tasks_per_node, slurm.gpus_per_node) == (1, 1, None)


def test_devices_auto_is_refused_naming_the_key():
    with pytest.raises(InterpolationResolutionError, match=r"trainer.devices must be a number >= 1, got 'auto'"):
        launcher(["trainer=ddp"]).get("tasks_per_node")
