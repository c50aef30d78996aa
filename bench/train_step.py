"""Lightning training-step overhead: median step time of `SinkflowModule` under `Trainer.fit` vs a bare loop, and
of `Trainer.fit` with `train.py`'s divergence guard vs without.

Both loops train the same model (tiny-LLaVA architecture, configurable size), LoRA, AdamW groups, schedule and
batch, in one process. Prints one JSON line; the goals are `ratio <= 1.10` and `guard_ratio <= 1.03`.

    python bench/train_step.py [--steps 40] [--text-hidden 256] [--text-layers 4] [--batch 8] [--accelerator cuda]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import lightning as L
import torch
from torch.utils.data import DataLoader

from common import device_label, synchronize
from sinkflow.data.collate import Collator, batch_to
from sinkflow.data.instruct import load_instruct
from sinkflow.data.templates import VicunaV1
from sinkflow.divergence import DivergenceGuard
from sinkflow.models.build import LoraSpec, prepare_for_training
from sinkflow.models.families.llava import LlavaFamily
from sinkflow.models.tiny import TinyLlavaSpec, build_tiny_llava
from sinkflow.module import OptimSpec, SinkflowModule
from sinkflow.shapes import generate_shapes
from sinkflow.sinks.strategies.none import NoneStrategy


class StepTimer(L.Callback):
    """Wall time between consecutive batch starts: everything Lightning does for one step."""

    def __init__(self):
        self.starts: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        synchronize(pl_module.device)
        self.starts.append(time.perf_counter())

    def on_train_end(self, trainer, pl_module):
        synchronize(pl_module.device)
        self.starts.append(time.perf_counter())


def build(args) -> tuple[SinkflowModule, dict]:
    spec = TinyLlavaSpec(
        text_hidden=args.text_hidden,
        text_layers=args.text_layers,
        vision_hidden=args.vision_hidden,
        vision_layers=args.vision_layers,
        image_size=args.image_size,
    )
    model, processor = build_tiny_llava(spec)
    family = LlavaFamily()
    model = prepare_for_training(model, family, lora=LoraSpec(r=16, alpha=32, dropout=0.0))
    module = SinkflowModule(model, processor, family, NoneStrategy(), optim=OptimSpec(lr=1e-4, projector_lr=1e-4))
    root = generate_shapes(tempfile.mkdtemp(), n_train=args.batch, n_eval=1, image_size=args.image_size)
    batch = Collator(processor, VicunaV1())(load_instruct(root / "train.json", root)[: args.batch])
    return module, batch


def bare_loop(module: SinkflowModule, batch: dict, steps: int, device: torch.device) -> list[float]:
    """The same optimisation written by hand: forward, backward, clip, step, schedule, zero_grad."""
    module.to(device)
    batch = batch_to(batch, device)
    optimizer = torch.optim.AdamW(module.parameter_groups(), weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    module.train()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        loss = module(batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def lightning_loop(
    module: SinkflowModule, batch: dict, steps: int, accelerator: str, precision: str, callbacks: tuple = ()
) -> list[float]:
    """`Trainer.fit` over a loader that yields the same batch (default callbacks + `callbacks`, progress bar off)."""
    loader = DataLoader([batch] * steps, batch_size=None, collate_fn=lambda b: b)
    timer = StepTimer()
    trainer = L.Trainer(
        max_steps=steps,
        accelerator=accelerator,
        devices=1,
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=1.0,
        callbacks=[timer, *callbacks],
        limit_val_batches=0,
        default_root_dir=tempfile.mkdtemp(),
    )
    trainer.fit(module, train_dataloaders=loader)
    return [b - a for a, b in zip(timer.starts, timer.starts[1:])]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of each loop")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--vision-hidden", type=int, default=128)
    parser.add_argument("--vision-layers", type=int, default=4)
    parser.add_argument("--text-hidden", type=int, default=256)
    parser.add_argument("--text-layers", type=int, default=4)
    parser.add_argument("--accelerator", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args()
    device = torch.device(args.accelerator)
    # fp32 in both loops: the comparison is about the loop, not mixed precision.
    accelerator, precision = ("gpu" if args.accelerator == "cuda" else "cpu"), "32-true"
    torch.manual_seed(0)
    module, batch = build(args)
    bare, lightning, guarded = [], [], []
    # Alternate the loops so that drift in machine load affects them alike.
    for _ in range(args.rounds):
        bare += bare_loop(module, batch, args.steps, device)[args.warmup :]
        lightning += lightning_loop(module, batch, args.steps, accelerator, precision)[args.warmup :]
        guarded += lightning_loop(module, batch, args.steps, accelerator, precision, (DivergenceGuard(),))[
            args.warmup :
        ]
    bare_s, lightning_s, guarded_s = statistics.median(bare), statistics.median(lightning), statistics.median(guarded)
    print(
        json.dumps(
            {
                "bench": "train_step",
                "bare_median_s": round(bare_s, 5),
                "lightning_median_s": round(lightning_s, 5),
                "ratio": round(lightning_s / bare_s, 4),
                "target_ratio": 1.10,
                "guarded_median_s": round(guarded_s, 5),
                "guard_ratio": round(guarded_s / lightning_s, 4),
                "target_guard_ratio": 1.03,
                "steps_measured_each": len(bare),
                "batch": args.batch,
                "seq_len": int(batch["input_ids"].shape[1]),
                "trainable_params": sum(p.numel() for p in module.parameters() if p.requires_grad),
                "device": device_label(device),
            }
        )
    )


if __name__ == "__main__":
    main()
