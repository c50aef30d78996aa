"""Export the trainable weights in formats plain transformers + peft load (LLaVA's adapter + projector split).

    model = AutoModelForImageTextToText.from_pretrained(base)
    <projector module>.load_state_dict(safetensors.torch.load_file(export / "projector.safetensors"))
    model = PeftModel.from_pretrained(model, export / "adapter")      # when LoRA was trained
    model.load_state_dict(load_file(export / "language_model.safetensors"), strict=False)  # full fine-tuning

`load_export` does exactly that; `export.json` records the base checkpoint and the projector's module path.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
from peft import PeftModel
from safetensors.torch import load_file, save_file
from torch import nn

from sinkflow.models.build import unwrap


def export_trainable(module, out_dir: str | Path) -> Path:
    """Write `adapter/` (peft), `projector.safetensors`, `strategy.safetensors` (if it has weights),
    `language_model.safetensors` (the trained LLM weights of full fine-tuning) and `export.json`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf = unwrap(module.model)
    projector = module.family.projector(hf)
    if isinstance(module.model, PeftModel):
        module.model.save_pretrained(out / "adapter")
    save_file({k: v.detach().cpu().contiguous() for k, v in projector.state_dict().items()},
              out / "projector.safetensors")
    projector_ids = {id(p) for p in projector.parameters()}
    tuned = {name: p for name, p in hf.named_parameters()
             if p.requires_grad and id(p) not in projector_ids and "lora_" not in name}
    if tuned and not isinstance(module.model, PeftModel):
        save_file({k: v.detach().cpu().contiguous() for k, v in tuned.items()}, out / "language_model.safetensors")
    strategy_state = module.strategy.state_dict()
    if strategy_state:
        save_file({k: v.detach().cpu().contiguous() for k, v in strategy_state.items()}, out / "strategy.safetensors")
    info = {
        "base_checkpoint": module.source,
        "projector_module": _module_path(hf, projector),
        "lora": isinstance(module.model, PeftModel),
        "language_model": bool(tuned) and not isinstance(module.model, PeftModel),
        "strategy": type(module.strategy).__name__,
    }
    (out / "export.json").write_text(json.dumps(info, indent=2))
    return out


def load_export(model: nn.Module, export_dir: str | Path) -> nn.Module:
    """Apply an export to a plain HF model: load the projector, then wrap with the peft adapter if there is one."""
    export_dir = Path(export_dir)
    info = json.loads((export_dir / "export.json").read_text())
    model.get_submodule(info["projector_module"]).load_state_dict(load_file(export_dir / "projector.safetensors"))
    if info.get("language_model"):
        tuned = load_file(export_dir / "language_model.safetensors")
        missing = set(tuned) - set(model.state_dict())
        if missing:
            raise ValueError(f"{export_dir}: language_model.safetensors names weights the model lacks: "
                             f"{sorted(missing)[:5]}")
        model.load_state_dict(tuned, strict=False)
    if info["lora"]:
        model = PeftModel.from_pretrained(model, export_dir / "adapter")
    return model


def _module_path(root: nn.Module, target: nn.Module) -> str:
    for name, mod in root.named_modules():
        if mod is target:
            return name
    raise ValueError("projector is not a submodule of the model")


class ExportTrainable(L.Callback):
    """At the end of fit, export the trainable weights next to the Lightning checkpoints (rank 0 only)."""

    def __init__(self, dirpath: str):
        self.dirpath = dirpath

    def on_train_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            export_trainable(pl_module, self.dirpath)
