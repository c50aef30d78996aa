"""A trained run read back without running any of its code: Lightning checkpoints through `torch.load(...,
weights_only=True)` (plain tensors and containers only: a pickle that would call a function is refused), exports
through safetensors and JSON. `train.py ckpt_path=` (resume) and `evaluate.py ckpt_path=` both go through here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from sinkflow.models.export import Export

EXPECTED = (
    "expected a sinkflow checkpoint (a run's checkpoints/last.ckpt, written by train.py) or, for evaluate.py, "
    "its export directory (checkpoints/export/)"
)


class CheckpointError(ValueError):
    """A file given as a checkpoint is not one sinkflow can read safely."""


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint at `path`, loaded with `weights_only=True`; one-line errors name it and what was expected."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path={path}: no such file; {EXPECTED}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 (torch raises KeyError, EOFError, RuntimeError, ... on a non-checkpoint)
        text = str(err)
        named = re.search(r"unsupported (?:global: )?GLOBAL ([\w.]+)", text, re.IGNORECASE)
        if named:  # the weights-only unpickler met a function or class to import: code would run
            raise CheckpointError(
                f"{path}: refused: loading it would call {named.group(1)}, and sinkflow never runs "
                f"code from a checkpoint; {EXPECTED}"
            ) from None
        detail = text.split("WeightsUnpickler error:", 1)[-1].strip() if "WeightsUnpickler error:" in text else text
        first = (detail.strip().splitlines() or [""])[0].split(". ")[0].rstrip(".")  # torch's advice trimmed off
        reason = f"{type(err).__name__}: {first[:200]}"
        raise CheckpointError(f"{path}: not a readable checkpoint ({reason}); {EXPECTED}") from None
    if not isinstance(checkpoint, dict) or "sinkflow" not in checkpoint or "state_dict" not in checkpoint:
        keys = sorted(checkpoint)[:5] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(f"{path}: not a sinkflow checkpoint (it holds {keys}, no 'sinkflow' entry); {EXPECTED}")
    return checkpoint


@dataclass
class TrainedRun:
    """What `evaluate.py ckpt_path=` points at: a checkpoint (trainable weights on top of the run's starting point)
    or an export (every trained weight, standing alone)."""

    path: str
    config: dict  # the run's model + sink_strategy (+ init_from)
    state: dict | None = None  # a checkpoint's trainable weights
    export: Export | None = None

    @property
    def init_from(self) -> str | None:
        """The export the model starts from before `state` loads: the export itself, or the run's own init_from."""
        return str(self.export.path) if self.export is not None else self.config.get("init_from")


def read_trained(path: str | Path) -> TrainedRun:
    """A checkpoint file or an export / run directory."""
    if Path(path).is_dir():
        export = Export.read(path, what="ckpt_path")
        return TrainedRun(str(export.path), export.config, export=export)
    checkpoint = read_checkpoint(path)
    return TrainedRun(str(path), checkpoint["sinkflow"]["config"], state=checkpoint["state_dict"])
