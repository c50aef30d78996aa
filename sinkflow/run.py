"""What `train.py` and `evaluate.py` run: compose objects from the config, fit / test, report."""

from __future__ import annotations

import difflib
import json
import logging
import re
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig, OmegaConf, open_dict
from transformers import AutoConfig

from sinkflow.analysis.context import analysis_context
from sinkflow.analysis.task import ANALYSES
from sinkflow.config import validate
from sinkflow.console import quiet_lightning
from sinkflow.data.predictions import read_predictions
from sinkflow.divergence import DivergenceGuard
from sinkflow.eval.callback import PredictionsCallback
from sinkflow.eval.results import now, results_document, run_provenance, write_results
from sinkflow.eval.score import print_table
from sinkflow.job import job
from sinkflow.loggers import build_loggers, log_config
from sinkflow.models.build import resolve_checkpoint
from sinkflow.models.checkpoint import read_checkpoint, read_trained
from sinkflow.models.region_pretraining import pretrain_vision
from sinkflow.module import SinkflowModule
from sinkflow.sinks.strategies.base import strategy_name

log = logging.getLogger(__name__)
quiet_lightning()  # imported by an entry point's main, once Hydra has configured logging


def build_trainer(cfg: DictConfig, extra_callbacks: list) -> L.Trainer:
    """Trainer with the configured loggers and callbacks (LR monitor dropped when there is no logger)."""
    loggers = build_loggers(cfg)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    if not loggers:
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    return instantiate(cfg.trainer, callbacks=callbacks + extra_callbacks, logger=loggers or False)


def build_datamodule(cfg: DictConfig, module: SinkflowModule, predictions: Path | None):
    """The dataset's DataModule, bound to the model's processor and template."""
    datamodule = instantiate(cfg.dataset, skip_predicted=str(predictions) if predictions else None)
    return datamodule.bind(module.processor, instantiate(cfg.model.template))


@job
def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, export the trainable weights, then test on the evaluation sets; returns the test metrics."""
    validate(cfg)
    if cfg.ckpt_path:
        read_checkpoint(cfg.ckpt_path)  # a one-line error for anything that is not a sinkflow checkpoint
    L.seed_everything(cfg.seed, workers=True)
    module = SinkflowModule.from_config(
        cfg.model, cfg.sink_strategy, train=True, init_from=cfg.init_from, intervention_cfg=cfg.get("intervention")
    )
    if cfg.get("vision_pretraining") and not cfg.ckpt_path:  # a resumed run's checkpoint holds the pretrained ViT
        accuracy = pretrain_vision(module, **cfg.vision_pretraining)
        (Path(cfg.paths.output_dir) / "vision_pretraining.json").write_text(json.dumps(accuracy, indent=2) + "\n")
    return fit_and_test(cfg, module, fit=cfg.train, test=cfg.test, callbacks=[DivergenceGuard(**cfg.divergence)])


def optimized_value(cfg: DictConfig, metrics: dict[str, float]) -> float | None:
    """What train.py returns to Hydra's sweeper: the run's `optimized_metric`. A search sweeper (Optuna) needs it, so
    there a metric the run did not measure is an error naming the closest keys it did."""
    value = metrics.get(cfg.optimized_metric)
    sweeper = HydraConfig.get().runtime.choices.get("hydra/sweeper") if HydraConfig.initialized() else None
    if value is None and sweeper not in (None, "basic"):
        close = difflib.get_close_matches(cfg.optimized_metric, list(metrics), n=5, cutoff=0.3)
        raise ValueError(
            f"optimized_metric={cfg.optimized_metric} is not among this run's {len(metrics)} metrics, and the "
            f"{sweeper} sweeper optimises it; closest: {close or 'none (did the run test? test=true)'}"
        )
    return value


@job
def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Generate on the evaluation sets with a trained run (checkpoint or export) or a pretrained model; score and
    print."""
    if OmegaConf.select(cfg, "trainer.overfit_batches"):
        raise ValueError(
            "trainer.overfit_batches (debug=overfit) repeats training batches, and evaluate.py does not train: "
            "use debug=default|fdr|limit|profiler"
        )
    return fit_and_test(cfg, evaluation_module(cfg), fit=False, test=True)


def evaluation_module(cfg: DictConfig) -> SinkflowModule:
    """The module an evaluation answers with (evaluate.py, the lmms-eval model): the trained run at `cfg.ckpt_path`,
    or the pretrained `cfg.model` routed by `cfg.sink_strategy`."""
    if cfg.ckpt_path:
        return load_trained(cfg)
    validate(cfg)
    intervention = get_class(cfg.intervention.intervention._target_) if cfg.get("intervention") else None
    if intervention is not None and not intervention.training_free:
        raise ValueError(
            f"intervention={intervention.name} has parts that are trained first (untrained, they would be scored "
            f"as if trained): train them (python train.py intervention={intervention.name}, e.g. experiment=lsg) and "
            "evaluate that run with ckpt_path=<run>/checkpoints/export"
        )
    L.seed_everything(cfg.seed, workers=True)
    return SinkflowModule.from_config(
        cfg.model, cfg.sink_strategy, train=False, intervention_cfg=cfg.get("intervention")
    )


def load_trained(cfg: DictConfig) -> SinkflowModule:
    """The module of the run at `cfg.ckpt_path` (checkpoint or export), with its model config and, unless
    `use_checkpoint_strategy=false`, its strategy; `cfg` takes both groups so that the run reports what it used."""
    trained = read_trained(cfg.ckpt_path)
    saved = OmegaConf.create(trained.config)
    ignored = strategy_overrides(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    if cfg.use_checkpoint_strategy and ignored:
        raise ValueError(
            f"{' '.join(ignored)}: with ckpt_path the run routes with the strategy its checkpoint trained with "
            f"({strategy_name(saved.sink_strategy)}), so these would be ignored; add use_checkpoint_strategy=false "
            "to route with the strategy given"
        )
    strategy_cfg = saved.sink_strategy if cfg.use_checkpoint_strategy else cfg.sink_strategy
    # The run's intervention comes with it (LSG's gates are trained for it), unless the command line sets one: a
    # training-free intervention applies to any trained run.
    overrides = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    saved_intervention = None if group_overrides(overrides, "intervention") else saved.get("intervention")
    trained_with, routed_with = strategy_name(saved.sink_strategy), strategy_name(strategy_cfg)
    hint = (
        ""
        if routed_with == trained_with
        else (
            f" (it was trained with strategy {trained_with}; routing it with {routed_with} needs a checkpoint trained "
            "with a training-free strategy, e.g. `make train ARGS=sink_strategy=none`)"
        )
    )
    # Replace (not merge) the groups: the checkpoint's model may have keys the default model config lacks.
    with open_dict(cfg):
        cfg.model, cfg.sink_strategy = saved.model, strategy_cfg
        if saved_intervention is not None:
            cfg.intervention = saved_intervention
    validate(cfg)
    L.seed_everything(cfg.seed, workers=True)
    module = SinkflowModule.from_config(
        cfg.model,
        cfg.sink_strategy,
        train=trained.state is not None,
        init_from=trained.init_from,
        hint=hint,
        intervention_cfg=cfg.get("intervention"),
    )
    if trained.state is not None:
        module.load_trainable(trained.state, trained.path, hint)
    return module


def strategy_overrides(overrides: list[str]) -> list[str]:
    """The command-line overrides that set the `sink_strategy` group or any of its keys."""
    return group_overrides(overrides, "sink_strategy")


def group_overrides(overrides: list[str], group: str) -> list[str]:
    """The command-line overrides that set config `group` or any of its keys."""
    return [o for o in overrides if re.match(rf"[+~]*{group}([./=@]|$)", o)]


def fit_and_test(
    cfg: DictConfig, module: SinkflowModule, *, fit: bool, test: bool, callbacks: list | None = None
) -> dict[str, float]:
    """What train.py and evaluate.py share: one trainer with the predictions scorer, fit (when asked), then answer
    the questions not yet in predictions.jsonl, score the whole file into metrics.json and print the table."""
    started = now()
    predictions = Path(cfg.paths.output_dir) / "predictions.jsonl"
    scorer = PredictionsCallback(str(predictions), resume=cfg.resume_predictions, parser=cfg.parser)
    datamodule = build_datamodule(cfg, module, predictions if cfg.resume_predictions else None)
    trainer = build_trainer(cfg, [scorer, *(callbacks or [])])
    log_parameter_counts(trainer, module, cfg)
    if fit:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=True)
        save_final_last(trainer)
    if not test:
        return {}
    trainer.test(module, datamodule=datamodule, verbose=False)  # sinkflow prints its own table, below
    if scorer.metrics is None:  # Lightning skips a test loop with no batch: every question was already answered
        log.info("every question is already in %s: scoring it again", scorer.path)
        scorer.rescore(trainer)
    if scorer.metrics:  # rank 0
        print_table(scorer.metrics, f"metrics ({scorer.path})")
        export = Path(cfg.paths.output_dir) / "checkpoints" / "export"
        weights = {"ckpt_path": cfg.ckpt_path, "init_from": cfg.get("init_from"), "export": export if fit else None}
        document = results_document(
            scorer.metrics,
            read_predictions(scorer.path),
            cfg.parser,
            run_provenance(cfg, module.source, weights, datamodule.eval_counts),
            started,
        )
        write_results(predictions.with_name("results.json"), document)
    return scorer.metrics or {}


@job
def analyze(cfg: DictConfig) -> dict:
    """`analyze.py task=<name>`: run one registered analysis (`sinkflow.analysis`) on the pretrained model, without
    gradients, and return its summary. The task's preflight checks its settings before anything loads."""
    analysis = ANALYSES[cfg.task]  # an unknown task: an error naming the registered ones
    validate(cfg, groups=("model", "sink_strategy", "dataset"))
    if analysis.preflight is not None:
        analysis.preflight(cfg[cfg.task], llm_depth(cfg.model))
    L.seed_everything(cfg.seed, workers=True)
    module = SinkflowModule.from_config(cfg.model, cfg.sink_strategy, train=False).eval()
    loggers = build_loggers(cfg)
    log_config(loggers, cfg)
    ctx = analysis_context(cfg, module, build_datamodule(cfg, module, None), loggers)
    with torch.no_grad():
        return analysis.run(ctx)


def llm_depth(model_cfg: DictConfig) -> int:
    """The number of layers of the model's LLM, read from its config alone (no weights load)."""
    config = AutoConfig.from_pretrained(resolve_checkpoint(model_cfg), trust_remote_code=model_cfg.trust_remote_code)
    return config.get_text_config().num_hidden_layers


def save_final_last(trainer: L.Trainer) -> None:
    """Rewrite `last.ckpt` with the final weights: its periodic writes (`callbacks.last_checkpoint`) may be steps
    behind the exported weights and the test predictions."""
    if trainer.fast_dev_run:
        return
    for callback in trainer.checkpoint_callbacks:
        if callback.save_last and callback.dirpath:
            trainer.save_checkpoint(Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}.ckpt")


def log_parameter_counts(trainer: L.Trainer, module: SinkflowModule, cfg: DictConfig) -> None:
    """Send the resolved config and parameter counts to every logger."""
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    log_config(trainer.loggers, cfg, {"params/total": total, "params/trainable": trainable})
    log.info("parameters: %d trainable of %d (%.3f%%)", trainable, total, 100 * trainable / max(total, 1))
