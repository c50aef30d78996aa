"""The caption every figure carries: the model it shows (and whether its sinks are simulated), the strategy, the
sink detector and the data, read once from the objects that ran, so that a PNG seen alone says what it is of."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sinkflow.data.datamodule import LVLMDataModule
    from sinkflow.module import SinkflowModule


@dataclass(frozen=True)
class Caption:
    model: str  # the hub id, or the local checkpoint directory's name
    strategy: str  # the registry name of the routing strategy
    detector: str | None  # the sink detector and its settings, e.g. "norm_threshold tau=100"
    data: str  # the generated dataset's directory name, or the evaluation sets' names
    simulated_sinks: bool  # the tiny models plant their sinks (docs/contracts.md#simulated-sinks)

    @classmethod
    def of(cls, module: SinkflowModule, datamodule: LVLMDataModule | None) -> Caption:
        """The caption of a run of `module` on `datamodule` (None: loaders given to `Trainer.fit` directly)."""
        source = str(module.source)
        detector = module.detector
        settings = (
            " ".join(f"{key}={value:g}" for key, value in detector.options().items() if value is not None)
            if detector is not None
            else ""
        )
        return cls(
            model=Path(source).name if Path(source).is_dir() else source,
            strategy=module.strategy.name,
            detector=f"{detector.name} {settings}".strip() if detector is not None else None,
            data=data_name(datamodule),
            simulated_sinks=module.simulated_sinks is not None,
        )

    def text(self, count: str) -> str:
        """Two lines: the model, strategy and detector; then the data and `count` (what the figure counts, e.g. "64
        images")."""
        model = f"{self.model} (SIMULATED sinks)" if self.simulated_sinks else self.model
        detector = f" · sinks: {self.detector}" if self.detector else ""
        return f"{model} · strategy {self.strategy}{detector}\ndata {self.data} · {count}"


def data_name(datamodule: LVLMDataModule | None) -> str:
    """The training file's directory (a generated dataset names its settings there: shapes-seed0-n1024-...), else the
    evaluation sets joined."""
    if datamodule is None:
        return "loaders given to Trainer.fit (no data module to name)"
    if datamodule.train_json:
        return Path(datamodule.train_json).parent.name
    return "+".join(datamodule.eval_sets)
