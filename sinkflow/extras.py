"""`extras` (conf/extras/default.yaml): what an entry point does with its config before its task starts.

- `ignore_warnings`: silence Python warnings for the run;
- `enforce_tags`: a run without `tags` stops with an error (no prompt: runs are often not interactive);
- `print_config`: print the resolved config as a tree and write it to `config_tree.log` in the output directory.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

# Printed first, in this order; the other top-level keys follow in the config's own order.
TREE_ORDER = ("model", "sink_strategy", "dataset", "trainer", "callbacks", "logger", "paths", "extras")


def apply_extras(cfg: DictConfig) -> None:
    """Apply `cfg.extras` (absent: nothing to do)."""
    extras = cfg.get("extras")
    if not extras:
        return
    if extras.get("ignore_warnings"):
        log.info("extras.ignore_warnings=true: Python warnings are silenced")
        warnings.filterwarnings("ignore")
    if extras.get("enforce_tags") and not cfg.get("tags"):
        raise ValueError(
            "extras.enforce_tags=true: this run has no tags; name what it is for, e.g. tags=[baseline,lr_sweep] "
            "(they go to every logger, W&B's run tags among them)"
        )
    if extras.get("print_config") and is_first_process():
        print_config_tree(cfg, Path(cfg.paths.output_dir) / "config_tree.log")


def is_first_process() -> bool:
    """Whether this is the process that reports: under DDP, Lightning relaunches the entry point for the other ranks
    (or SLURM starts them) with their rank in the environment, which Lightning reads on import."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return rank_zero_only.rank == 0


def print_config_tree(cfg: DictConfig, path: Path) -> None:
    """The resolved config as a Rich tree (one branch per top-level key, its YAML inside) on the console and in
    `path`."""
    from rich.console import Console
    from rich.syntax import Syntax
    from rich.tree import Tree

    tree = Tree("config", guide_style="dim")
    keys = [k for k in TREE_ORDER if k in cfg] + [k for k in cfg if k not in TREE_ORDER]
    for key in keys:
        value = cfg[key]
        text = OmegaConf.to_yaml(value, resolve=True) if OmegaConf.is_config(value) else f"{value}\n"
        tree.add(key).add(Syntax(text.rstrip("\n"), "yaml", theme="ansi_dark", background_color="default"))
    Console().print(tree)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as file:
        Console(file=file, width=120, color_system=None).print(tree)
