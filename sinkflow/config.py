"""Config helpers: the resolvers (`wandb_offline`, the SLURM launcher's) and start-up validation with errors that name
the key."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from sinkflow.checks import number

REQUIRED = {
    "model": ("family", "checkpoint", "template", "dtype", "optim"),
    "sink_strategy": ("strategy",),
    "dataset": ("_target_",),
    "trainer": ("_target_",),
}
# Bounds of the numeric `model.lora` / `model.optim` options (`LoraSpec` checks the LoRA ones again when built).
LORA_NUMBERS = {"r": {"integer": True, "at_least": 1}, "alpha": {"above": 0}, "dropout": {"at_least": 0, "below": 1}}
OPTIM_NUMBERS = {
    "lr": {"above": 0},
    "projector_lr": {"above": 0},
    "strategy_lr": {"above": 0, "optional": True},
    "weight_decay": {"at_least": 0},
    "warmup_ratio": {"at_least": 0, "at_most": 1},
    "min_lr_ratio": {"at_least": 0, "at_most": 1},
}


# The repository's config folder (train.py, evaluate.py and analyze.py compose from it).
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose_config(
    overrides: Sequence[str] = (), config_name: str = "train", search: Sequence[Path] = ()
) -> DictConfig:
    """The config an entry point composes from `overrides` (tests, benches), with extra config folders `search`."""
    folders = ",".join(f"file://{Path(folder).resolve()}" for folder in search)
    extra = [f"hydra.searchpath=[{folders}]"] if search else []
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name, overrides=[*overrides, *extra])


def wandb_offline() -> bool:
    """W&B runs offline unless WANDB_MODE=online (or the config sets logger.wandb.offline=false)."""
    return os.environ.get("WANDB_MODE", "offline").lower() != "online"


def slurm_tasks_per_node(devices: int | str) -> int:
    """`hydra/launcher=slurm`: a srun task per trainer device, each a DDP rank (Lightning's SLURMEnvironment)."""
    if isinstance(devices, int) and not isinstance(devices, bool) and devices >= 1:
        return devices
    raise ValueError(
        f"hydra/launcher=slurm starts one task per device: trainer.devices must be a number >= 1, got {devices!r} "
        "(e.g. trainer=ddp trainer.devices=4)"
    )


def slurm_gpus_per_node(accelerator: str, devices: int | str) -> int | None:
    """`hydra/launcher=slurm`: the GPUs a node of the job asks for (none for a CPU trainer)."""
    return slurm_tasks_per_node(devices) if accelerator in ("gpu", "cuda") else None


for _name, _resolver in (
    ("wandb_offline", wandb_offline),
    ("slurm_tasks_per_node", slurm_tasks_per_node),
    ("slurm_gpus_per_node", slurm_gpus_per_node),
):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _resolver)


def validate(cfg: DictConfig, groups: tuple[str, ...] = tuple(REQUIRED)) -> None:
    """Fail fast on a malformed composed config, naming the missing or wrong key (checks `groups` only)."""
    for group, keys in ((g, REQUIRED[g]) for g in groups):
        if group not in cfg or cfg[group] is None:
            raise ValueError(f"config group `{group}` is missing: pick one, e.g. `{group}=<name>`")
        for key in keys:
            if key not in cfg[group] or OmegaConf.is_missing(cfg[group], key):
                raise ValueError(f"config key `{group}.{key}` is missing (see conf/{group}/)")
    lora = cfg.model.get("lora")
    if lora is not None:
        check_numbers("model.lora", lora, LORA_NUMBERS, required=("r", "alpha"))
        if not lora.get("target_modules"):
            raise ValueError("`model.lora.target_modules` is empty: list LLM linear names or set model.lora=null")
    check_optim(cfg.model.optim)
    check_required(cfg)


def check_required(cfg: DictConfig) -> None:
    """Every key an experiment lists under `required` is set (experiments cannot mark a key `???`: merged over the
    default of the primary config, a `???` leaves that default in place)."""
    for key, what in (cfg.get("required") or {}).items():
        if OmegaConf.select(cfg, key, default=None, throw_on_missing=False) in (None, "???"):
            raise ValueError(f"`{key}` must be set for this experiment: {what}")


def check_optim(optim) -> None:
    """The numeric `model.optim` options (a config node or a dict); `OptimSpec` checks itself with this too."""
    check_numbers("model.optim", optim, OPTIM_NUMBERS, required=("lr", "projector_lr"))
    betas = optim.get("betas")
    if betas is not None:
        if not (isinstance(betas, (list, tuple)) or OmegaConf.is_list(betas)) or len(betas) != 2:
            raise ValueError(f"`model.optim.betas` must be two numbers (beta1, beta2), got {betas!r}")
        for i, beta in enumerate(betas):
            number(f"model.optim.betas[{i}]", beta, at_least=0, below=1)


def check_numbers(prefix: str, options, bounds: dict[str, dict], required: tuple[str, ...]) -> None:
    """`number` on the options that `options` sets and on the `required` ones (a missing one reads as None)."""
    for name, bound in bounds.items():
        if name in required or name in options:
            number(f"{prefix}.{name}", options.get(name), **bound)
