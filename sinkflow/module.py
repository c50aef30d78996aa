"""The LightningModule: owns the HF model, family, detector and strategy; runs the visual pathway.

It holds no family- or strategy-specific branches: the family says where features live and how tokens merge,
the strategy says which tokens reach the LLM. Checkpoints keep only the trainable weights.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.distributed.fsdp import FSDPModule

from sinkflow.checks import number
from sinkflow.config import check_optim
from sinkflow.data.collate import Collator
from sinkflow.divergence import require_finite
from sinkflow.interventions.base import Intervention
from sinkflow.interventions.none import NoIntervention
from sinkflow.models.build import load_pretrained, prepare_for_training, resolve_checkpoint, unwrap
from sinkflow.models.export import Export
from sinkflow.models.families.base import VisualFamily
from sinkflow.models.packing import pack
from sinkflow.models.prefill import timing_prefill
from sinkflow.models.sharding import FullyShardedStrategy, gathered, trainable_state
from sinkflow.models.shared_prefix import RoutingPrompts, one_image_per_row, prefill_once, reuse_prefix
from sinkflow.models.vit_attention import with_attention
from sinkflow.pathway import LlmColumns, PaddingSide, PathwayResult, Routed, VisualFeatures
from sinkflow.sinks.detectors.base import SinkDetector, token_norms
from sinkflow.sinks.routing_answers import answer_tokens
from sinkflow.sinks.simulated import SimulatedSinks
from sinkflow.sinks.stats import SinkStats, log_histograms
from sinkflow.sinks.strategies.base import SinkStrategy, strategy_name

log = logging.getLogger(__name__)


@dataclass
class OptimSpec:
    """AdamW with separate groups (LoRA / projector / strategy) and a cosine schedule with linear warmup."""

    lr: float = 2e-4
    projector_lr: float = 2e-5
    strategy_lr: float | None = None  # None: same as projector_lr
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_ratio: float = 0.03
    min_lr_ratio: float = 0.0

    def __post_init__(self):
        check_optim(asdict(self))


@dataclass
class GenerationSpec:
    """Greedy decoding settings for evaluation."""

    max_new_tokens: int = 16

    def __post_init__(self):
        number("model.generation.max_new_tokens", self.max_new_tokens, integer=True, at_least=1)


class SinkflowModule(L.LightningModule):
    """Wraps an LVLM with sink-aware token routing; training loss, and greedy batched generation for evaluation."""

    def __init__(
        self,
        model: nn.Module,
        processor,
        family: VisualFamily,
        strategy: SinkStrategy,
        detector: SinkDetector | None = None,
        optim: OptimSpec | dict | None = None,
        generation: GenerationSpec | dict | None = None,
        source: str | None = None,
        run_config: dict | None = None,
        simulated_sinks: SimulatedSinks | None = None,
        question_collator: Collator | None = None,
        init_from: Export | None = None,
        intervention: Intervention | None = None,
    ):
        super().__init__()
        self.source = source  # the base checkpoint (hub id or directory) the trainable weights apply to
        self.run_config = run_config  # model + strategy config, stored in checkpoints so evaluate.py can rebuild
        self.model = model
        self.processor = processor
        self.family = family
        self.strategy = strategy
        self.detector = detector
        self.simulated_sinks = simulated_sinks  # tiny model only: planted sinks with known positions
        # renders the questions a deciding strategy (cot_route) asks about the images into generation prompts
        self.question_collator = question_collator
        self.init_from = init_from  # the export this run started from (its weights go into this run's export too)
        # While an answer pass is being prepared: the routing generations its strategy ran, whose cache it may reuse.
        self._routing_prompts: list[RoutingPrompts] | None = None
        self._answer_caps: dict[tuple[str, ...], int] = {}  # `ask`'s cap per tuple of expected answers
        self._cache_bytes = 0  # the KV cache of the last answer pass
        if strategy.needs_sinks and detector is None:
            raise ValueError(f"sink strategy {strategy.name!r} needs a detector: set sink_strategy.detector")
        strategy.setup(unwrap(model), family)
        # changes how the LLM runs (its attention) while the strategy's tokens pass through it; none by default
        self.intervention = intervention or NoIntervention()
        if unwrap(model).is_activation_checkpointing and not isinstance(self.intervention, NoIntervention):
            raise ValueError(
                "model.gradient_checkpointing=true recomputes the LLM's layers in the backward pass, after "
                f"intervention {self.intervention.name!r} has stopped acting (the gradients would be those of another "
                "forward): train with one of them"
            )
        self.intervention.setup(unwrap(model))
        self.stats = nn.ModuleDict({"val": SinkStats(), "test": SinkStats()})
        self.optim = OptimSpec(**optim) if isinstance(optim, dict) else (optim or OptimSpec())
        self.generation = (
            GenerationSpec(**generation) if isinstance(generation, dict) else generation or GenerationSpec()
        )
        # Checkpoints hold trainable weights only; the frozen base reloads from the checkpoint it came from.
        self.strict_loading = False

    @classmethod
    def from_config(
        cls,
        model_cfg: DictConfig,
        strategy_cfg: DictConfig,
        *,
        train: bool,
        init_from: str | None = None,
        hint: str = "",
        intervention_cfg: DictConfig | None = None,
    ) -> SinkflowModule:
        """Load the model, start it from an earlier run's export (`init_from`), freeze / LoRA it (when training),
        and wrap it with family, detector, strategy and intervention (`intervention_cfg`; none without). `hint` ends
        the error of a strategy the export's weights do not fit."""
        source = resolve_checkpoint(model_cfg)
        family = instantiate(model_cfg.family)
        start = Export.read(init_from, what="init_from") if init_from else None
        model, processor = load_pretrained(
            source,
            family=family,
            dtype=model_cfg.dtype,
            attn_implementation=model_cfg.attn_implementation,
            trust_remote_code=model_cfg.trust_remote_code,
        )
        if start is not None:
            if start.info["base_checkpoint"] != source:
                log.warning(
                    "init_from=%s was trained on %s, but model.checkpoint is %s",
                    start.path,
                    start.info["base_checkpoint"],
                    source,
                )
            start.apply_base(model)  # before the strategy copies the projector
        lora = OmegaConf.to_container(model_cfg.lora) if train and model_cfg.lora is not None else None
        model = prepare_for_training(
            model,
            family,
            freeze_vision=model_cfg.freeze_vision,
            train_projector=train and model_cfg.train_projector,
            lora=lora,
            train_language_model=train and model_cfg.train_language_model,
            adapter=start.adapter if start is not None else None,
            gradient_checkpointing=train and model_cfg.get("gradient_checkpointing", False),
        )
        simulated = model_cfg.get("simulated_sinks")
        run_config = {
            "model": OmegaConf.to_container(model_cfg, resolve=True),
            "sink_strategy": OmegaConf.to_container(strategy_cfg, resolve=True),
            **({"intervention": OmegaConf.to_container(intervention_cfg, resolve=True)} if intervention_cfg else {}),
            **({"init_from": str(start.path.resolve())} if start is not None else {}),
        }
        module = cls(
            model,
            processor,
            family,
            instantiate(strategy_cfg.strategy),
            instantiate(strategy_cfg.detector) if strategy_cfg.get("detector") else None,
            optim=OmegaConf.to_container(model_cfg.optim),
            generation=OmegaConf.to_container(model_cfg.generation),
            source=source,
            run_config=run_config,
            simulated_sinks=instantiate(simulated) if simulated else None,
            question_collator=Collator(processor, instantiate(model_cfg.template), generate=True),
            init_from=start,
            intervention=instantiate(intervention_cfg.intervention) if intervention_cfg else None,
        )
        if start is not None:
            start.apply_strategy(module.strategy, hint)
            start.apply_intervention(module.intervention, required=not train)
        return module

    @property
    def hf(self) -> nn.Module:
        """The HF model (LoRA layers injected in place when LoRA is on)."""
        return unwrap(self.model)

    def pathway(self, batch: dict, padding_side: PaddingSide = "right") -> PathwayResult:
        """encode -> detect -> route -> merge: the LLM inputs and what was seen on the way.

        The detector runs when the strategy needs sinks, and outside training so that sink statistics are logged
        for every strategy.
        """
        hf = self.hf
        if batch.get("pixel_values") is None:
            inputs, columns = self.family.merge(hf, batch, None, None, padding_side)
            return PathwayResult(inputs, columns=columns)
        visual = self.visual(batch)
        needs_sinks = self.strategy.needs_sinks or self.intervention.needs_sinks
        detect = self.detector is not None and (needs_sinks or not self.training)
        sinks = self.family.token_sinks(self.detector, visual) if detect else None
        routed = self.strategy(visual, sinks, partial(self.family.project, hf), ask=partial(self.ask, batch, visual))
        inputs, columns = self.family.merge(hf, batch, visual, routed, padding_side, sinks)
        return PathwayResult(inputs, visual, sinks, routed, columns)

    def llm(self, seen: PathwayResult):
        """The HF model's forward on the pathway's LLM inputs, the intervention acting."""
        with self.intervention.acting(self.hf, seen.columns):
            return self.hf(**seen.inputs)

    @torch.no_grad()
    def ask(
        self,
        batch: dict,
        visual: VisualFeatures,
        questions: list[str],
        images: list[int],
        routed: Routed,
        max_new_tokens: int | None,
        answers: Sequence[str] = (),
    ) -> list[str]:
        """The model's greedy answers to `questions[k]` about the batch's image `images[k]` (repeats allowed), in one
        generation, the images entering the LLM as `routed`: encoded and routed once, however often they are asked
        about. Each answer takes at most `max_new_tokens` tokens, or with None as many as the longest of the expected
        `answers` takes as the tokenizer writes it (`routing_answers.answer_tokens`). With a strategy that reuses its
        routing cache, rows about one image prefill the prefix they share once (`shared_prefix.prefill_once`)."""
        if self.question_collator is None:
            raise ValueError(
                f"strategy {self.strategy.name!r} asks the model questions: give SinkflowModule a "
                "question_collator (a generation Collator with the model's template)"
            )
        if max_new_tokens is None:
            if not answers:
                raise ValueError("ask: max_new_tokens=None caps answers at the longest expected answer; give `answers`")
            answers = tuple(answers)
            if answers not in self._answer_caps:
                self._answer_caps[answers] = answer_tokens(self.processor.tokenizer, answers)
            max_new_tokens = self._answer_caps[answers]
        image_inputs, shown = self.family.select_images(batch, visual, images)
        asked = {**self.question_collator.ask(batch, questions, images), **image_inputs}
        inputs, columns = self.family.merge(self.hf, asked, shown, routed.select(images), padding_side="left")
        inputs.pop("labels", None)
        cache = None
        if self._reuses_routing_cache and (shared := prefill_once(self.hf, inputs, list(images))) is not None:
            inputs, cache = shared
        out = self._generate(inputs, max_new_tokens, columns, cache)
        if self._routing_prompts is not None:
            prompts = RoutingPrompts(
                inputs["inputs_embeds"], inputs["attention_mask"], list(images), out.past_key_values
            )
            self._routing_prompts.append(prompts)
        return [answer.strip() for answer in self._decode(out.sequences, max_new_tokens)]

    def visual(self, batch: dict) -> VisualFeatures:
        """The projector-input features of the batch's images (with the simulated sinks, when planted)."""
        tower_trains = any(p.requires_grad for p in self.family.vision_tower(self.hf).parameters())
        grad = torch.is_grad_enabled() and tower_trains
        with self.intervention.encoding(self.hf, self.family):
            if self.strategy.needs_vit_attention:
                visual = with_attention(self.hf, self.family, batch, grad)
            else:
                with torch.set_grad_enabled(grad):
                    visual = self.family.encode(self.hf, batch)
        visual = replace(
            visual, keys=list(batch.get("image_keys", [])), questions=list(batch.get("image_questions", []))
        )
        if self.simulated_sinks is not None:
            features, planted = self.simulated_sinks(visual, self.family.patch_pixels(batch, visual))
            visual = replace(visual, features=features, planted=planted)
        return visual

    def forward(self, batch: dict):
        """Forward with labels: HF output with `.loss` (mean over supervised tokens) and `.logits`. A batch marked
        `pack` (dataset.packing) runs the LLM on its samples packed into shared rows of `batch["pack"]["capacity"]`
        tokens (`models.packing`): the same loss, less padding; its logits are those of the packed rows."""
        seen = self.pathway(batch)
        if not batch.get("pack"):
            return self.llm(seen)
        if not isinstance(self.intervention, NoIntervention):
            raise ValueError(
                f"dataset.packing=true puts several samples in a row; intervention {self.intervention.name!r} reads "
                "one sample per row: train with one of them"
            )
        return self.hf(**pack(seen.inputs, **batch["pack"]))

    def training_step(self, batch, batch_idx):
        loss = self(batch).loss
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["meta"]))
        self.log(
            "train/truncated_rows",
            float(batch.get("n_truncated", 0)),
            reduce_fx="sum",
            on_step=False,
            on_epoch=True,
            batch_size=len(batch["meta"]),
        )
        return loss

    def validation_step(self, batch, batch_idx):
        with gathered(self):  # the pathway runs outside `forward`: under FSDP its root weights are gathered here
            seen = self.pathway(batch)
            loss = self.llm(seen).loss
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(batch["meta"]))
        self._observe("val", seen)
        return loss

    @torch.no_grad()
    def generate(self, batch: dict) -> list[str]:
        """Greedy batched generation (left-padded prompts) -> decoded answers."""
        return self._greedy(batch)[0]

    def _greedy(self, batch: dict, max_new_tokens: int | list[int] | None = None) -> tuple[list[str], PathwayResult]:
        """Greedy answers to the batch, and what its pathway saw. `max_new_tokens` may give each row its own limit (a
        record's benchmark setting): the batch generates to the longest and each row is cut at its own, which greedy
        decoding makes the same answer as generating that row alone with its limit.

        When the strategy asked the model before routing and reuses its cache (`reuse_routing_cache`), the answer
        prompts' prefix shared with the routing prompts is not prefilled again (`models.shared_prefix`)."""
        self._routing_prompts = [] if self._reuses_routing_cache else None
        try:
            seen = self.pathway(batch, padding_side="left")
            asked = self._routing_prompts
        finally:
            self._routing_prompts = None
        inputs, cache = seen.inputs, None
        inputs.pop("labels", None)
        if asked:
            rows = one_image_per_row(batch["image_samples"], len(batch["input_ids"]))
            reused = reuse_prefix(inputs, rows, asked[-1])
            if reused is not None:
                inputs, cache = reused
        out = self._generate(inputs, max_new_tokens, seen.columns, cache)
        cache = out.past_key_values.layers if out.past_key_values is not None else []
        self._cache_bytes = sum(
            t.numel() * t.element_size() for layer in cache for t in (layer.keys, layer.values) if t is not None
        )
        return self._decode(out.sequences, max_new_tokens), seen

    @property
    def _reuses_routing_cache(self) -> bool:
        """Whether routing and answer passes share their prefixes' caches: the strategy asks for it, and no
        intervention changes the attention (its context would differ between the passes' rows)."""
        return self.strategy.reuse_routing_cache and isinstance(self.intervention, NoIntervention)

    def _generate(
        self,
        inputs: dict,
        max_new_tokens: int | list[int] | None,
        columns: LlmColumns | None,
        past_key_values=None,
    ):
        """HF greedy generation to the longest of the limits, the intervention acting on rows laid out as `columns`:
        the new tokens and the cache it filled."""
        tokenizer = self.processor.tokenizer
        limits = max_new_tokens or self.generation.max_new_tokens
        with self.intervention.acting(self.hf, columns):
            return self.hf.generate(
                **inputs,
                past_key_values=past_key_values,
                max_new_tokens=max(limits) if isinstance(limits, list) else limits,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                return_dict_in_generate=True,
            )

    def _decode(self, sequences: torch.Tensor, max_new_tokens: int | list[int] | None) -> list[str]:
        """Generated tokens -> text, each row cut at its own limit when rows have their own."""
        tokenizer = self.processor.tokenizer
        if isinstance(max_new_tokens, list):
            sequences = [row[:limit] for row, limit in zip(sequences, max_new_tokens)]
        return tokenizer.batch_decode(sequences, skip_special_tokens=True)

    def _observe(self, stage: str, seen: PathwayResult) -> None:
        """Accumulate sink statistics of one batch (when the detector ran)."""
        visual = seen.visual
        if visual is not None and seen.sinks is not None:
            # Per tile: a tiled image's crops each ran through the ViT alone, each with its own sinks.
            planted = (
                visual.by_tile(visual.to_tokens(visual.planted), tokens=True)[0] if visual.planted is not None else None
            )
            norms, lengths = visual.by_tile(token_norms(visual.features))
            valid = (
                torch.arange(norms.shape[1], device=norms.device) < torch.tensor(lengths, device=norms.device)[:, None]
            )
            sinks = visual.by_tile(seen.sinks, tokens=True)[0]
            self.stats[stage].update(norms, sinks, planted, keys=visual.tile_keys() or None, valid=valid)

    def _log_stats(self, stage: str) -> None:
        stats = self.stats[stage]
        # Decided across ranks: compute() synchronises, so a rank without images must still take part.
        seen = stats.update_count > 0
        if not self.trainer.strategy.reduce_boolean_decision(seen, all=False):
            return
        if not seen:
            stats.add_nothing()
        scalars, samples = stats.compute()
        self.log_dict({f"{stage}/{k}": v for k, v in scalars.items()})
        log_histograms(self.loggers, samples, self.global_step, stage)
        stats.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_stats("val")

    def on_test_epoch_end(self) -> None:
        self._log_stats("test")

    @torch.no_grad()
    def test_step(self, batch, batch_idx):
        records, seen = self._answer(batch)
        self._observe("test", seen)
        return records

    @torch.no_grad()
    def predict_step(self, batch, batch_idx):
        return self._answer(batch)[0]

    def _answer(self, batch: dict) -> tuple[list[dict], PathwayResult]:
        """Prediction records of a batch (with each image's routing decision and its share of the deciding time, when
        the strategy decided: the decision itself for a question with one image, the list of its images' decisions
        in prompt order for one with several)."""
        limits = [meta.get("max_new_tokens", self.generation.max_new_tokens) for meta in batch["meta"]]
        with timing_prefill(self.hf) as prefill, gathered(self):
            answers, seen = self._greedy(batch, limits)
        self._log_efficiency(seen, prefill, len(batch["meta"]))
        records = [dict(meta, prediction=text.strip()) for meta, text in zip(batch["meta"], answers)]
        routed = seen.routed
        if routed is not None and routed.decisions is not None:
            seconds = routed.decision_seconds / max(len(routed.decisions), 1)
            per_record: dict[int, list[dict]] = defaultdict(list)
            for row, decision in zip(batch["image_samples"], routed.decisions):
                per_record[row].append(dict(decision, seconds=seconds))
            for row, decisions in per_record.items():
                records[row]["routing"] = decisions[0] if len(decisions) == 1 else decisions
        return records, seen

    def _log_efficiency(self, seen: PathwayResult, prefill: list[float], n_questions: int) -> None:
        """Per question: the visual tokens the LLM kept (after FastV's drop, with it), the prefill's milliseconds and
        the KV cache after answering (MB); on CUDA the peak memory of the test so far."""
        if seen.columns is None or self._trainer is None:
            return
        measured = {
            "visual_tokens": float(self.intervention.visual_tokens(seen.columns).float().mean()),
            "prefill_ms": 1000 * sum(prefill) / n_questions,
            "kv_cache_mb": self._cache_bytes / n_questions / 2**20,
        }
        if seen.inputs["inputs_embeds"].is_cuda:
            measured["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
        for key, value in measured.items():
            self.log(f"test/efficiency/{key}", value, batch_size=n_questions, sync_dist=True)

    def parameter_groups(self) -> list[dict]:
        """Trainable parameters split into LoRA / projector / strategy (with the intervention's) / other groups, each
        with its own LR."""
        projector = {id(p) for p in self.family.projector(self.hf).parameters()}
        strategy = {id(p) for p in (*self.strategy.parameters(), *self.intervention.parameters())}
        strategy_lr = self.optim.projector_lr if self.optim.strategy_lr is None else self.optim.strategy_lr
        groups = {
            "lora": ([], self.optim.lr),
            "projector": ([], self.optim.projector_lr),
            "strategy": ([], strategy_lr),
            "other": ([], self.optim.lr),
        }
        for name, p in self.named_parameters():
            if p.requires_grad:
                key = (
                    "projector"
                    if id(p) in projector
                    else "strategy"
                    if id(p) in strategy
                    else "lora"
                    if "lora_" in name
                    else "other"
                )
                groups[key][0].append(p)
        return [{"name": k, "params": ps, "lr": lr} for k, (ps, lr) in groups.items() if ps]

    def configure_optimizers(self):
        groups = self.parameter_groups()
        if not groups:
            raise ValueError("nothing to train: no parameter requires grad (check model.lora / freeze settings)")
        optimizer = torch.optim.AdamW(groups, weight_decay=self.optim.weight_decay, betas=tuple(self.optim.betas))
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        schedule = partial(
            cosine_with_warmup,
            total=total,
            warmup=int(self.optim.warmup_ratio * total),
            min_ratio=self.optim.min_lr_ratio,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Module state restricted to trainable parameters (what a checkpoint needs on top of the base model),
        gathered from their shards under FSDP (`trainer=fsdp`: every rank takes part)."""
        return trainable_state(self)

    def configure_model(self) -> None:
        """Under `trainer=fsdp`, shard the model (`models.sharding`); nothing otherwise."""
        strategy = self._trainer.strategy if self._trainer is not None else None
        if isinstance(strategy, FullyShardedStrategy) and not isinstance(self, FSDPModule):
            strategy.shard(self)

    def load_trainable(self, state: dict, origin: str, hint: str = "") -> None:
        """Load a trainable-only state dict; every trainable parameter must be covered and nothing left over.

        A checkpoint without strategy weights (trained with a training-free strategy) is routed by a strategy whose
        parts copy the model's (e.g. cot_route's projectors): they are copied again from the loaded weights."""
        self.check_fit(state, origin, hint)
        self.load_state_dict(state, strict=False)
        if not any(key.startswith("strategy.") for key in state):
            self.strategy.setup(self.hf, self.family)  # parts copied from the model follow its loaded weights

    def check_fit(self, state: dict, origin: str, hint: str = "") -> None:
        """Raise unless `state` holds exactly the trainable parameters (`strict_loading` is off: checkpoints hold
        only those, so Lightning alone would load a foreign checkpoint's nothing without a word)."""
        missing = {n for n, p in self.named_parameters() if p.requires_grad} - set(state)
        unexpected = set(state) - set(self.state_dict())
        if missing or unexpected:
            raise ValueError(
                f"{origin}: checkpoint does not fit the model: missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(unexpected)[:5]}{hint}"
            )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The strategy's state dict, kept to the trainable weights (under FSDP it holds only those, gathered already).
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        require_finite(checkpoint["state_dict"], f"a checkpoint at step {self.global_step}")
        checkpoint["sinkflow"] = {"source": self.source, "config": self.run_config}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("sinkflow", {}).get("config") or {}
        trained_with = strategy_name(saved.get("sink_strategy"))
        hint = (
            f" (it was trained with strategy {trained_with}, this run uses {self.strategy.name}: resume with the "
            "arguments of the run that wrote it)"
            if trained_with != self.strategy.name
            else ""
        )
        self.check_fit(checkpoint["state_dict"], str(self.trainer.ckpt_path) if self._trainer else "checkpoint", hint)


def cosine_with_warmup(step: int, *, total: int, warmup: int, min_ratio: float = 0.0) -> float:
    """LR multiplier: linear warmup over `warmup` steps, then cosine decay to `min_ratio` at `total`."""
    if step < warmup:
        return step / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
