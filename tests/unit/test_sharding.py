"""`trainer=fsdp` composes Lightning's ModelParallelStrategy as sinkflow's FullyShardedStrategy (its options checked);
the FSDP run itself is tests/integration/test_fsdp.py."""

import pytest
import torch
from hydra.utils import instantiate

from sinkflow.config import compose_config
from sinkflow.models.sharding import FullyShardedStrategy


def test_trainer_fsdp_builds_the_fully_sharded_strategy():
    cfg = compose_config(["trainer=fsdp"])
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, FullyShardedStrategy)
    assert (strategy.param_dtype, strategy.cpu_offload) == ("bfloat16", False)
    assert cfg.trainer.precision == "32-true"  # FSDP's own mixed precision, not Lightning's autocast as well


def test_an_unknown_parameter_dtype_names_the_key():
    with pytest.raises(ValueError, match=r"`trainer.strategy.param_dtype` must be one of \('bfloat16', 'float16'\)"):
        FullyShardedStrategy(param_dtype="int8")


def test_cpu_offload_on_a_cpu_run_is_refused():
    strategy = FullyShardedStrategy(cpu_offload=True)
    strategy.parallel_devices = [torch.device("cpu")]
    with pytest.raises(ValueError, match="trainer.strategy.cpu_offload=true moves parameters from the GPU"):
        strategy.shard(torch.nn.Linear(2, 2))
