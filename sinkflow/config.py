"""Config helpers: the `wandb_offline` resolver and start-up validation with errors that name the key."""

from __future__ import annotations

import os

from omegaconf import DictConfig, OmegaConf

REQUIRED = {
    "model": ("family", "checkpoint", "template", "dtype", "optim"),
    "sink_strategy": ("strategy",),
    "dataset": ("_target_",),
    "trainer": ("_target_",),
}


def wandb_offline() -> bool:
    """W&B runs offline unless WANDB_MODE=online (or the config sets logger.wandb.offline=false)."""
    return os.environ.get("WANDB_MODE", "offline").lower() != "online"


if not OmegaConf.has_resolver("wandb_offline"):
    OmegaConf.register_new_resolver("wandb_offline", wandb_offline)


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
        for key in ("r", "alpha"):
            if not isinstance(lora.get(key), int) or lora[key] <= 0:
                raise ValueError(f"`model.lora.{key}` must be a positive integer, got {lora.get(key)!r}")
        if not lora.get("target_modules"):
            raise ValueError("`model.lora.target_modules` is empty: list LLM linear names or set model.lora=null")
    optim = cfg.model.optim
    for key in ("lr", "projector_lr"):
        if not isinstance(optim.get(key), (int, float)) or optim[key] <= 0:
            raise ValueError(f"`model.optim.{key}` must be a positive number, got {optim.get(key)!r}")
