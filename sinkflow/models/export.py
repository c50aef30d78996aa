"""Exports: a run's trained weights as safetensors, in the formats plain transformers + peft load (LLaVA's adapter +
projector split), plus sinkflow's strategy parts and the run's config.

    model = AutoModelForImageTextToText.from_pretrained(base)
    <projector module>.load_state_dict(safetensors.torch.load_file(export / "projector.safetensors"))
    model = PeftModel.from_pretrained(model, export / "adapter")      # when LoRA was trained
    model.load_state_dict(load_file(export / "language_model.safetensors"), strict=False)  # full fine-tuning

`load_export` does exactly that, and refuses an export whose strategy has weights (`strategy.safetensors`: a
Dual-MLP's two projectors route tokens by sink, which only sinkflow's pathway applies). `Export` reads an export
back for sinkflow itself: `evaluate.py ckpt_path=<export>` and `train.py init_from=<export>` start from it.
Nothing here unpickles: every file is safetensors or JSON.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from peft import PeftModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.fsdp import FSDPModule

from sinkflow.divergence import require_finite
from sinkflow.models.build import unwrap
from sinkflow.models.sharding import trainable_state, whole
from sinkflow.wandb_logger import JobWandbLogger

log = logging.getLogger(__name__)

INFO = "export.json"


def export_trainable(module, out_dir: str | Path, state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write `adapter/` (peft), `projector.safetensors`, `strategy.safetensors` and `intervention.safetensors` (if
    they have weights), `language_model.safetensors` (LLM weights that differ from the base: full fine-tuning, or
    inherited from the export the run started from) and `export.json` (base checkpoint, projector path, the run's
    config). `state` is what `export_state` gives (gathered from the shards under FSDP), by default now."""
    out = Path(out_dir)
    state = export_state(module) if state is None else state
    hf = unwrap(module.model)
    projector_prefix = f"{_module_path(module, module.family.projector(hf))}."
    inherited = module.init_from.language_model_keys() if module.init_from is not None else set()
    if inherited and isinstance(module, FSDPModule):
        raise ValueError("an FSDP run exports its trainable weights only: start it from an export without LLM weights")
    model_prefix = "model." + ("base_model.model." if isinstance(module.model, PeftModel) else "")
    # LoRA renames the layers it wraps (`q_proj.base_layer.weight`); plain transformers knows `q_proj.weight`.
    tuned = {
        name[len(model_prefix) :].replace(".base_layer.", "."): value
        for name, value in state.items()
        if name.startswith(model_prefix) and not name.startswith(projector_prefix) and "lora_" not in name
    }
    tuned.update(
        (name.replace(".base_layer.", "."), p)
        for name, p in hf.named_parameters()
        if name.replace(".base_layer.", ".") in inherited
    )
    files = {
        "projector.safetensors": _under(state, projector_prefix),
        "strategy.safetensors": _under(state, "strategy."),
        "intervention.safetensors": _under(state, "intervention."),
        "language_model.safetensors": tuned,
    }
    files = {name: {k: v.detach().cpu().contiguous() for k, v in w.items()} for name, w in files.items() if w}
    for name, weights in files.items():
        require_finite(weights, f"{out / name}")
    lora = {name[len("model.") :]: value for name, value in state.items() if "lora_" in name}
    require_finite(lora, f"{out / 'adapter'}")
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(module.model, PeftModel):
        module.model.save_pretrained(out / "adapter", state_dict=lora)
    for name, weights in files.items():
        save_file(weights, out / name)
    info = {
        "base_checkpoint": module.source,
        "projector_module": _module_path(hf, module.family.projector(hf)),
        "lora": isinstance(module.model, PeftModel),
        "language_model": "language_model.safetensors" in files,
        "strategy": type(module.strategy).__name__,
        "config": module.run_config,
    }
    (out / INFO).write_text(json.dumps(info, indent=2))
    return out


def export_state(module) -> dict[str, torch.Tensor]:
    """What an export writes, by the module's parameter names, whole (under FSDP every rank takes part): the trainable
    weights, and the projector's, the strategy's, the intervention's and the LoRA weights whether they train or not
    (a stage that trains one of a strategy's projectors, an adapter applied frozen: the export carries them all)."""
    state = trainable_state(module)
    for part in (module.family.projector(unwrap(module.model)), module.strategy, module.intervention):
        prefix = _module_path(module, part)
        state.update((f"{prefix}.{k}", whole(v)) for k, v in part.state_dict().items())
    state.update((name, whole(v)) for name, v in module.state_dict().items() if "lora_" in name)
    return state


def _under(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The weights named under `prefix`, named from there."""
    return {name[len(prefix) :]: value for name, value in state.items() if name.startswith(prefix)}


@dataclass
class Export:
    """An export directory read back (`Export.read` accepts the export or the run directory holding it)."""

    path: Path
    info: dict

    @classmethod
    def read(cls, path: str | Path, what: str = "export") -> Export:
        """The export at `path` (or at `path/checkpoints/export`); `what` names the setting in errors."""
        path = Path(path)
        found = next((p for p in (path, path / "checkpoints" / "export") if (p / INFO).is_file()), None)
        if found is None:
            raise FileNotFoundError(
                f"{what}={path}: expected an export directory (with {INFO}) or a run directory "
                f"(with checkpoints/export/{INFO})"
            )
        try:
            info = json.loads((found / INFO).read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{found / INFO}: expected a JSON object ({err.msg})") from None
        missing = [k for k in ("base_checkpoint", "projector_module", "lora", "strategy") if k not in info]
        if missing:
            raise ValueError(f"{found / INFO}: {', '.join(missing)}: missing (not a sinkflow export)")
        export = cls(found, info)
        for name in (
            ("projector.safetensors",)
            + (("adapter/adapter_config.json",) if info["lora"] else ())
            + (("language_model.safetensors",) if info.get("language_model") else ())
        ):
            if not (found / name).is_file():
                raise FileNotFoundError(f"{found}: {name} is missing ({INFO} lists it)")
        return export

    @property
    def config(self) -> dict:
        """The run's config (model + sink_strategy [+ init_from]), as `evaluate.py` rebuilds it."""
        if not self.info.get("config"):
            raise ValueError(
                f"{self.path / INFO}: no run config (an export from an older sinkflow): evaluate the "
                "run's checkpoints/last.ckpt instead"
            )
        return self.info["config"]

    @property
    def adapter(self) -> Path | None:
        """The peft adapter directory, when LoRA was trained."""
        return self.path / "adapter" if self.info["lora"] else None

    @property
    def strategy_file(self) -> Path | None:
        path = self.path / "strategy.safetensors"
        return path if path.is_file() else None

    def language_model_keys(self) -> set[str]:
        """The names in `language_model.safetensors` (read from its header: a full LLM is many gigabytes)."""
        if not self.info.get("language_model"):
            return set()
        with safe_open(self.path / "language_model.safetensors", framework="pt") as weights:
            return set(weights.keys())

    def apply_base(self, model: nn.Module) -> None:
        """Load the projector (and the fine-tuned language model) into a plain HF model, in place."""
        _load(model.get_submodule(self.info["projector_module"]), self.path / "projector.safetensors", strict=True)
        if self.info.get("language_model"):
            _load(model, self.path / "language_model.safetensors", strict=False)

    def apply_intervention(self, intervention: nn.Module, required: bool) -> None:
        """Load `intervention.safetensors` (LSG's gates) into `intervention`, which must hold exactly its weights;
        without the file, an intervention with weights keeps its initialisation unless they are `required` (an
        evaluation: untrained gates would be evaluated as if trained)."""
        path = self.path / "intervention.safetensors"
        if path.is_file():
            _load(intervention, path, strict=True)
        elif required and intervention.state_dict():
            raise ValueError(
                f"{self.path}: no intervention.safetensors for intervention {type(intervention).__name__}, whose "
                "parts must be trained (the run was trained without it)"
            )

    def apply_strategy(self, strategy: nn.Module, hint: str = "") -> None:
        """Load `strategy.safetensors` into `strategy`: every weight in the file must have a place; parts the file
        lacks (ReW's router over a Dual-MLP export) keep their own initialisation, and are named in the log."""
        if self.strategy_file is None:
            return
        state = load_file(self.strategy_file)
        own = strategy.state_dict()
        homeless = sorted(set(state) - set(own))
        if homeless:
            raise ValueError(
                f"{self.strategy_file}: weights that strategy {type(strategy).__name__} has no place for "
                f"({homeless[:3]}; trained with {self.info['strategy']}){hint}"
            )
        _load(strategy, self.strategy_file, strict=False, state=state)
        fresh = sorted({k.split(".")[0] for k in set(own) - set(state)})
        if fresh:
            log.info("%s: strategy parts not in the export keep their own initialisation: %s", self.path, fresh)


def _load(module: nn.Module, path: Path, strict: bool, state: dict | None = None) -> None:
    """`module.load_state_dict` from a safetensors file, with errors naming the file."""
    state = load_file(path) if state is None else state
    unknown = set(state) - set(module.state_dict())
    if unknown:
        raise ValueError(f"{path}: names weights the model lacks: {sorted(unknown)[:5]}")
    try:
        module.load_state_dict(state, strict=strict)
    except RuntimeError as err:
        raise ValueError(f"{path}: does not fit the model: {err}") from None


def load_export(model: nn.Module, export_dir: str | Path) -> nn.Module:
    """Apply an export to a plain HF model: load the projector, then wrap with the peft adapter if there is one.

    Refused when the export's strategy has weights (they route tokens by sink: only sinkflow applies them);
    a loud warning when the run trained under a training-free routing that plain transformers does not repeat."""
    export = Export.read(export_dir)
    strategy = export.info["strategy"]
    if export.strategy_file is not None:
        raise ValueError(
            f"{export.path}: trained with strategy {strategy}, whose weights (strategy.safetensors) route tokens by "
            "sink; plain transformers cannot apply them, and projector.safetensors is the model's own, untrained "
            f"projector. Evaluate it with sinkflow: `python evaluate.py ckpt_path={export.path}`"
        )
    if strategy != "NoneStrategy":
        warnings.warn(
            f"{export.path}: trained with sink routing {strategy}; plain transformers feeds the visual "
            "tokens in their original order, so its answers will differ from sinkflow's "
            f"(`python evaluate.py ckpt_path={export.path}`)",
            stacklevel=2,
        )
    export.apply_base(model)
    if export.adapter is not None:
        model = PeftModel.from_pretrained(model, export.adapter)
    return model


def _module_path(root: nn.Module, target: nn.Module) -> str:
    for name, mod in root.named_modules():
        if mod is target:
            return name
    raise ValueError("projector is not a submodule of the model")


class ExportTrainable(L.Callback):
    """At the end of fit, export the trainable weights next to the Lightning checkpoints (rank 0 only), and log the
    export as an artifact to the W&B loggers that ask for it (`logger.wandb.log_export=true`)."""

    def __init__(self, dirpath: str):
        self.dirpath = dirpath

    def on_train_end(self, trainer, pl_module):
        state = export_state(pl_module)  # under FSDP every rank takes part in gathering it
        if not trainer.is_global_zero:
            return
        out = export_trainable(pl_module, self.dirpath, state)
        info = {k: v for k, v in json.loads((out / INFO).read_text()).items() if k != "config"}  # the run has it
        for logger in trainer.loggers:
            if isinstance(logger, JobWandbLogger) and logger.log_export:
                logger.log_directory(out, "export", metadata=info)
