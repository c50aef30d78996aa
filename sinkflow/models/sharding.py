"""`trainer=fsdp`: FSDP2 (`torch.distributed.fsdp.fully_shard`) through Lightning's `ModelParallelStrategy`, for
models that do not fit one GPU.

Every repeated layer of the model (transformers marks them `GradientCheckpointingLayer`: the LLM's decoder layers and
the ViT's blocks) is a unit of its own, gathered for its forward and backward only; the rest (embeddings, LM head,
projector, norms, the strategy's and the intervention's parts) is the root unit, the whole `SinkflowModule`, so that
the pathway, which reaches into the model's parts directly, runs with them gathered. The data-parallel mesh spans
every process of every node (no tensor parallelism). Options: parameters in bf16 with float32 gradient reduction
(`param_dtype`), parameters and gradients offloaded to the CPU (`cpu_offload`).

Checkpoints stay trainable-only: the frozen base is never gathered; the trainable weights are gathered on rank 0 into
the same one-file checkpoint and `checkpoints/export/` a single-device run writes, which plain transformers + peft
loads and from which a run resumes exactly.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from transformers.modeling_layers import GradientCheckpointingLayer

from sinkflow.checks import choice

PARAM_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


class FullyShardedStrategy(ModelParallelStrategy):
    """Lightning's ModelParallelStrategy as pure FSDP2 over every process, sharding sinkflow's module (`shard`)."""

    def __init__(self, param_dtype: str | None = None, cpu_offload: bool = False, **kwargs):
        super().__init__(save_distributed_checkpoint=False, **kwargs)
        if param_dtype is not None:
            choice("trainer.strategy.param_dtype", param_dtype, list(PARAM_DTYPES))
        self.param_dtype = param_dtype
        self.cpu_offload = cpu_offload

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()

    def shard(self, module: nn.Module) -> None:
        """Each repeated layer a unit, then the whole module as the root unit (see the module docstring)."""
        if self.cpu_offload and self.root_device.type == "cpu":
            raise ValueError(
                "trainer.strategy.cpu_offload=true moves parameters from the GPU to the CPU between uses; this run is "
                "on the CPU already: set it false"
            )
        options: dict = {"mesh": self.device_mesh["data_parallel"]}
        if self.param_dtype is not None:
            options["mp_policy"] = MixedPrecisionPolicy(
                param_dtype=PARAM_DTYPES[self.param_dtype], reduce_dtype=torch.float32
            )
        if self.cpu_offload:
            options["offload_policy"] = CPUOffloadPolicy()
        for layer in [m for m in module.modules() if isinstance(m, GradientCheckpointingLayer)]:
            fully_shard(layer, **options)
        fully_shard(module, **options)

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict:
        """Lightning loads the weights into the shards itself and hands the module's `on_load_checkpoint` a checkpoint
        without them; they go back in, so that the module checks they fit (trainable-only checkpoints load
        non-strictly)."""
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=True, mmap=True)["state_dict"]
        checkpoint = super().load_checkpoint(checkpoint_path, weights_only=True)  # nothing a user hands over unpickles
        checkpoint["state_dict"] = state
        return checkpoint

    def lightning_module_state_dict(self) -> dict:
        """The trainable weights, gathered (the frozen base never is)."""
        return trainable_state(self.model)


def trainable_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's trainable weights by name, whole: gathered from their shards when the module is sharded (every
    rank takes part), else as they are."""
    names = {n for n, p in module.named_parameters() if p.requires_grad}
    return {k: whole(v) for k, v in module.state_dict().items() if k in names}


def whole(value: torch.Tensor) -> torch.Tensor:
    """A tensor gathered from its shards into CPU memory (every rank takes part; one tensor at a time on the GPU),
    or the tensor itself."""
    return value.full_tensor().cpu() if isinstance(value, DTensor) else value


@contextmanager
def gathered(module: nn.Module):
    """The root unit's parameters gathered while the pathway runs outside the module's forward (validation,
    generation); nothing for a module that is not sharded."""
    if not isinstance(module, FSDPModule):
        yield
        return
    module.unshard()
    try:
        yield
    finally:
        module.reshard()
