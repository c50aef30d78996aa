"""What `train.py` and `evaluate.py` run: compose objects from the config, fit / test, report."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig, OmegaConf, open_dict
from rich.console import Console
from rich.progress import track
from transformers import AutoConfig

from sinkflow.analysis.calibration_plots import plot_norm_histogram, plot_sorted_norms
from sinkflow.analysis.tasks import ANALYSES, PREFLIGHTS, analysis_context
from sinkflow.config import validate
from sinkflow.data.collate import Collator, load_image
from sinkflow.divergence import DivergenceGuard
from sinkflow.eval.callback import PredictionsCallback
from sinkflow.eval.score import print_table
from sinkflow.models.build import load_pretrained, prepare_for_training
from sinkflow.models.checkpoint import read_checkpoint, read_trained
from sinkflow.models.export import Export
from sinkflow.module import SinkflowModule
from sinkflow.sinks.calibrate import summarise
from sinkflow.sinks.detect import SinkDetector, token_norms

log = logging.getLogger(__name__)


def resolve_checkpoint(model_cfg: DictConfig) -> str:
    """The model's source: a hub id / directory, or the path a builder (e.g. the tiny model) returns."""
    source = model_cfg.checkpoint
    return str(instantiate(source)) if isinstance(source, DictConfig) else str(source)


def build_module(model_cfg: DictConfig, strategy_cfg: DictConfig, *, train: bool, init_from: str | None = None,
                 hint: str = "") -> SinkflowModule:
    """Load the model, start it from an earlier run's export (`init_from`), freeze / LoRA it (when training), and wrap
    it with family, detector and strategy. `hint` ends the error of a strategy the export's weights do not fit."""
    source = resolve_checkpoint(model_cfg)
    family = instantiate(model_cfg.family)
    start = Export.read(init_from, what="init_from") if init_from else None
    model, processor = load_pretrained(source, family=family, dtype=model_cfg.dtype,
                                       attn_implementation=model_cfg.attn_implementation,
                                       trust_remote_code=model_cfg.trust_remote_code)
    if start is not None:
        if start.info["base_checkpoint"] != source:
            log.warning("init_from=%s was trained on %s, but model.checkpoint is %s", start.path,
                        start.info["base_checkpoint"], source)
        start.apply_base(model)  # before the strategy copies the projector
    lora = OmegaConf.to_container(model_cfg.lora) if train and model_cfg.lora is not None else None
    model = prepare_for_training(model, family, freeze_vision=model_cfg.freeze_vision,
                                 train_projector=train and model_cfg.train_projector, lora=lora,
                                 train_language_model=train and model_cfg.train_language_model,
                                 adapter=start.adapter if start is not None else None)
    strategy = instantiate(strategy_cfg.strategy)
    detector = instantiate(strategy_cfg.detector) if strategy_cfg.get("detector") else None
    simulated = model_cfg.get("simulated_sinks")
    prompter = Collator(processor, instantiate(model_cfg.template), generate=True)
    run_config = {"model": OmegaConf.to_container(model_cfg, resolve=True),
                  "sink_strategy": OmegaConf.to_container(strategy_cfg, resolve=True),
                  **({"init_from": str(start.path.resolve())} if start is not None else {})}
    module = SinkflowModule(model, processor, family, strategy, detector,
                            optim=OmegaConf.to_container(model_cfg.optim),
                            generation=OmegaConf.to_container(model_cfg.generation),
                            source=source, run_config=run_config,
                            simulated_sinks=instantiate(simulated) if simulated else None, prompter=prompter,
                            init_from=start)
    if start is not None:
        start.apply_strategy(module.strategy, hint)
    return module


def build_trainer(cfg: DictConfig, extra_callbacks: list) -> L.Trainer:
    """Trainer with the configured loggers and callbacks (LR monitor dropped when there is no logger)."""
    loggers = build_loggers(cfg)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    if not loggers:
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    return instantiate(cfg.trainer, callbacks=callbacks + extra_callbacks, logger=loggers or False)


def build_loggers(cfg: DictConfig) -> list:
    """The Lightning loggers of `cfg.logger` (none when the group is `none`)."""
    return [instantiate(c) for c in (cfg.get("logger") or {}).values()]


def build_datamodule(cfg: DictConfig, module: SinkflowModule, predictions: Path | None):
    """The dataset's DataModule, bound to the model's processor and template."""
    datamodule = instantiate(cfg.dataset, skip_predicted=str(predictions) if predictions else None)
    return datamodule.bind(module.processor, instantiate(cfg.model.template))


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, export the trainable weights, then test on the evaluation sets; returns the test metrics."""
    validate(cfg)
    if cfg.ckpt_path:
        read_checkpoint(cfg.ckpt_path)  # a one-line error for anything that is not a sinkflow checkpoint
    L.seed_everything(cfg.seed, workers=True)
    module = build_module(cfg.model, cfg.sink_strategy, train=True, init_from=cfg.init_from)
    trainer, datamodule, scorer = build_run(cfg, module, [DivergenceGuard(**cfg.divergence)])
    log_parameter_counts(trainer, module, cfg)
    if cfg.train:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=True)
        save_final_last(trainer)
    return test_and_report(trainer, module, datamodule, scorer) if cfg.test else {}


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Generate on the evaluation sets with a trained run (checkpoint or export) or a pretrained model; score and
    print."""
    model_cfg, strategy_cfg, trained, hint = cfg.model, cfg.sink_strategy, None, ""
    if cfg.ckpt_path:
        trained = read_trained(cfg.ckpt_path)
        saved = OmegaConf.create(trained.config)
        model_cfg = saved.model
        if cfg.use_checkpoint_strategy:
            strategy_cfg = saved.sink_strategy
        trained_with = saved.sink_strategy.strategy._target_.rsplit(".", 1)[-1]
        routed_with = strategy_cfg.strategy._target_.rsplit(".", 1)[-1]
        if routed_with != trained_with:
            hint = (f" (it was trained with strategy {trained_with}; routing it with {routed_with} needs a checkpoint "
                    "trained with a training-free strategy, e.g. `make train ARGS=sink_strategy=none`)")
    # Replace (not merge) the groups: the checkpoint's model may have keys the default model config lacks.
    with open_dict(cfg):
        cfg.model, cfg.sink_strategy = model_cfg, strategy_cfg
    validate(cfg)
    L.seed_everything(cfg.seed, workers=True)
    module = build_module(cfg.model, cfg.sink_strategy, train=trained is not None and trained.state is not None,
                          init_from=trained.init_from if trained is not None else None, hint=hint)
    if trained is not None and trained.state is not None:
        module.load_trainable(trained.state, trained.path, hint)
    trainer, datamodule, scorer = build_run(cfg, module, [])
    return test_and_report(trainer, module, datamodule, scorer)


def build_run(cfg: DictConfig, module: SinkflowModule, callbacks: list):
    """The trainer (with the predictions scorer and `callbacks`), the data module and the scorer of a run."""
    predictions = Path(cfg.paths.output_dir) / "predictions.jsonl"
    scorer = PredictionsCallback(str(predictions), resume=cfg.resume_predictions, parser=cfg.parser)
    datamodule = build_datamodule(cfg, module, predictions if cfg.resume_predictions else None)
    return build_trainer(cfg, [scorer, *callbacks]), datamodule, scorer


def test_and_report(trainer: L.Trainer, module: SinkflowModule, datamodule, scorer: PredictionsCallback
                    ) -> dict[str, float]:
    """Answer the questions not yet in predictions.jsonl, score the whole file into metrics.json, print the table."""
    trainer.test(module, datamodule=datamodule)
    if scorer.metrics is None:  # Lightning skips a test loop with no batch: every question was already answered
        log.info("every question is already in %s: scoring it again", scorer.path)
        scorer.rescore(trainer)
    if scorer.metrics:
        print_table(scorer.metrics, f"metrics ({scorer.path})")
    return scorer.metrics or {}


def analyze(cfg: DictConfig) -> dict:
    """`analyze.py task=<name>`: run one analysis task and return its summary."""
    tasks = {"calibrate": calibrate, **dict.fromkeys(ANALYSES, run_analysis)}
    if cfg.task not in tasks:
        raise ValueError(f"unknown analysis task={cfg.task!r}; available: {sorted(tasks)}")
    return tasks[cfg.task](cfg)


def run_analysis(cfg: DictConfig) -> dict:
    """A `sinkflow.analysis` task (propagation, massive_dims, ...) on the pretrained model, without gradients."""
    validate(cfg, groups=("model", "sink_strategy", "dataset"))
    if cfg.task in PREFLIGHTS:
        PREFLIGHTS[cfg.task](cfg[cfg.task], llm_depth(cfg.model))
    L.seed_everything(cfg.seed, workers=True)
    module = build_module(cfg.model, cfg.sink_strategy, train=False).eval()
    ctx = analysis_context(cfg, module, build_datamodule(cfg, module, None), build_loggers(cfg))
    with torch.no_grad():
        return ANALYSES[cfg.task](ctx)


def llm_depth(model_cfg: DictConfig) -> int:
    """The number of layers of the model's LLM, read from its config alone (no weights load)."""
    config = AutoConfig.from_pretrained(resolve_checkpoint(model_cfg), trust_remote_code=model_cfg.trust_remote_code)
    return config.get_text_config().num_hidden_layers


def calibrate(cfg: DictConfig) -> dict:
    """Token norms of the model's ViT over a dataset's images -> histogram, sorted-norm curves, suggested tau."""
    validate(cfg, groups=("model", "sink_strategy", "dataset"))
    settings = cfg.calibrate
    module = build_module(cfg.model, cfg.sink_strategy, train=False).eval()
    datamodule = build_datamodule(cfg, module, None)
    datamodule.prepare_data()
    datamodule.setup("fit" if settings.split == "train" else "test")
    samples = datamodule.train_set if settings.split == "train" else datamodule.test_set
    paths = list(dict.fromkeys(s["image"] for s in samples if s.get("image")))[: settings.max_images]
    if not paths:
        raise ValueError(f"dataset has no images in its {settings.split!r} split to calibrate on")
    rows, lengths, planted = [], [], []
    chunks = [paths[i:i + settings.batch_size] for i in range(0, len(paths), settings.batch_size)]
    with torch.no_grad():
        for chunk in track(chunks, description=f"ViT norms of {len(paths)} images"):
            inputs = module.processor.image_processor([load_image(p) for p in chunk], return_tensors="pt")
            visual = module.visual({k: v.to(module.device) for k, v in inputs.items()})
            norms = token_norms(visual.features).cpu()
            for i, n in enumerate(visual.patch_lengths):
                rows.append(norms[i, :n])
                lengths.append(n)
                if visual.planted is not None:
                    planted.append(visual.planted[i, :n].cpu())
    norms_all = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)
    detector = module.detector if isinstance(module.detector, SinkDetector) else None
    summary = summarise(norms_all, lengths=lengths, configured=detector, min_ratio=settings.min_ratio,
                        planted=torch.nn.utils.rnn.pad_sequence(planted, batch_first=True) if planted else None)
    summary = {"model": module.source, "split": settings.split, **summary}
    output = Path(cfg.paths.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    (output / "calibration.json").write_text(json.dumps(summary, indent=2))
    lines = {"suggested tau": summary["suggested_tau"],
             "configured tau": detector.tau if detector is not None and detector.mode == "norm_threshold" else None}
    title = f"{Path(module.source).name}: {len(paths)} images"
    plot_norm_histogram(torch.cat(rows), output / "norm_histogram.png", lines, title)
    plot_sorted_norms(rows, output / "sorted_norms.png", lines, title)
    Console().print_json(json.dumps(summary))
    log.info("calibration written to %s (calibration.json, norm_histogram.png, sorted_norms.png)", output)
    return summary


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
    params = {"params/total": total, "params/trainable": trainable}
    for logger in trainer.loggers:
        logger.log_hyperparams({**OmegaConf.to_container(cfg, resolve=True), **params})
    log.info("parameters: %d trainable of %d (%.3f%%)", trainable, total, 100 * trainable / max(total, 1))
