"""Training and evaluation throughput at scale: a released architecture with random weights (`models.full_size`) on
a GPU in bf16, LoRA r128 on every LLM linear, rows of up to `--seq` tokens.

- Training: tokens/s and MFU of a full step (forward, backward, AdamW), padded rows vs packed (`dataset.packing`), each
  with and without activation checkpointing (`model.gradient_checkpointing`), at the largest batch that fits (found by
  doubling from 1 until the GPU runs out of memory, unless `--batch` is given). The samples' lengths spread evenly
  from a quarter of `--seq` to `--seq` (instruction data with answers of every length). MFU counts the LLM's model
  FLOPs per token as PaLM does, 6 N + 12 L d T (N its parameters without the input embeddings, L layers of width d,
  T the row length), over the GPU's dense bf16 peak (`--peak-tflops`; known for H100 / H200 / A100); LoRA's
  frozen weights skip their weight gradients, so the true work is below the count.
- Evaluation: POPE-format questions ("Is there a ... in the image?", answered in at most 4 tokens) per second at
  batch `--eval-batch`, and the minutes 9,000 of them take (the target: 3 on one H100 / H200).

On the CPU `--model bench` (the bench-size tiny LLaVA, 336-px images) runs every path at a small size.

    python bench/scale.py --model llava-1.5-7b --accelerator cuda [--seq 2048] [--batch N] [--steps 6]
    python bench/scale.py --model qwen2.5-vl-7b --accelerator cuda
    python bench/scale.py                               # bench size on the CPU: the script's own check
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import tempfile

import torch
from PIL import Image

from common import SIZES, device_label, synchronize, timed
from sinkflow.data.collate import Collator, batch_to
from sinkflow.models.build import LoraSpec, decoder_layers, prepare_for_training
from sinkflow.models.families.base import FAMILIES
from sinkflow.models.families.llava import LlavaFamily
from sinkflow.models.full_size import FULL_SIZES, build_full_size
from sinkflow.module import OptimSpec, SinkflowModule
from sinkflow.sinks.strategies.none import NoneStrategy

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16
WORDS = [
    "the",
    "red",
    "circle",
    "sits",
    "left",
    "of",
    "a",
    "blue",
    "square",
    "above",
    "two",
    "green",
    "triangles",
    "near",
    "the",
    "yellow",
    "star",
]
POPE_QUESTIONS = 9000
LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build(args, train: bool, checkpointing: bool = False) -> tuple[SinkflowModule, object]:
    """The module on the device: the full-size model (bf16) or the bench-size tiny LLaVA (float32 on the CPU)."""
    torch.manual_seed(0)
    if args.model == "bench":
        model, processor = LlavaFamily.build_tiny(image_size=336, **SIZES)
        family_cls = LlavaFamily
        model.to(args.accelerator)
    else:
        model, processor = build_full_size(args.model, args.accelerator, torch.bfloat16)
        family_cls = FAMILIES[FULL_SIZES[args.model][0]]
    family = family_cls()
    if train:
        lora = LoraSpec(r=args.lora_r, alpha=2 * args.lora_r, dropout=0.0, target_modules=LINEARS)
        model = prepare_for_training(model, family, lora=lora, gradient_checkpointing=checkpointing)
    module = SinkflowModule(model, processor, family, NoneStrategy(), optim=OptimSpec(lr=1e-5, projector_lr=1e-5))
    return module.train(train), family_cls.default_template()


def training_samples(args, image: str, count: int, tokenizer) -> list[dict]:
    """`count` one-image conversations whose answers make rows from a quarter of `--seq` tokens to `--seq`."""
    rng = random.Random(0)
    samples = []
    for i in range(count):
        target = args.seq // 4 + (3 * args.seq // 4) * i // max(count - 1, 1)
        words = [rng.choice(WORDS) for _ in range(max(target - args.image_tokens, 8))]
        answer = " ".join(words)
        ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        answer = tokenizer.decode(ids[: max(target - args.image_tokens - 48, 8)])
        samples.append(
            {
                "id": str(i),
                "image": image,
                "conversations": [
                    {"from": "human", "value": "<image>\nDescribe the image."},
                    {"from": "gpt", "value": answer},
                ],
            }
        )
    rng.shuffle(samples)
    return samples


def llm_flops_per_token(module: SinkflowModule, row_length: int) -> float:
    """PaLM's model FLOPs per trained token of the LLM: 6 N + 12 L d T."""
    hf = module.hf
    embeddings = hf.get_input_embeddings().weight.numel()
    decoder = sum(p.numel() for p in hf.get_decoder().parameters()) - embeddings
    n = decoder + hf.get_output_embeddings().weight.numel()
    layers = decoder_layers(hf)
    width = layers[0].self_attn.config.hidden_size
    return 6 * n + 12 * len(layers) * width * row_length


def train_mode(args, samples: list[dict], packing: bool, checkpointing: bool, device) -> dict:
    """Tokens/s and MFU of full steps at the largest batch that fits (or `--batch`)."""
    module, template = build(args, train=True, checkpointing=checkpointing)
    collate = Collator(module.processor, template, max_length=args.seq, pack=packing)
    optimizer = torch.optim.AdamW(module.parameter_groups(), lr=1e-5)

    def step(batch):
        module(batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def run(batch_size: int) -> tuple[float, int]:
        seconds, tokens = 0.0, 0
        for index in range(args.warmup + args.steps):
            rows = [samples[(index * batch_size + k) % len(samples)] for k in range(batch_size)]
            batch = batch_to(collate(rows), device)
            elapsed = timed(lambda b=batch: step(b), device)[1]
            if index >= args.warmup:
                seconds += elapsed
                tokens += int(batch["attention_mask"].sum())
        return seconds, tokens

    batch_size = args.batch or 1
    seconds, tokens = run(batch_size)
    while args.batch is None and device.type == "cuda":  # double until the GPU runs out of memory
        try:
            seconds, tokens = run(2 * batch_size)
            batch_size *= 2
        except torch.OutOfMemoryError:
            break
        finally:
            optimizer.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
    speed = tokens / seconds
    result = {"batch": batch_size, "tokens_per_second": round(speed, 1)}
    if device.type == "cuda":
        result["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
        flops = speed * llm_flops_per_token(module, args.seq)
        result["mfu"] = round(flops / (args.peak_tflops * 1e12), 3)
    return result


def released(device: torch.device) -> None:
    """The memory of the model the last mode built, back to the GPU before the next one."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def eval_speed(args, image: str, device) -> dict:
    """POPE-format questions answered per second at `--eval-batch`."""
    module, template = build(args, train=False)
    module.generation.max_new_tokens = 4
    collate = Collator(module.processor, template, generate=True)
    objects = ["circle", "square", "triangle", "star", "dog", "car", "chair", "cup"]
    questions = [
        {
            "id": str(i),
            "image": image,
            "conversations": [{"from": "human", "value": f"<image>\nIs there a {objects[i % 8]} in the image?"}],
        }
        for i in range(args.eval_batch * (args.eval_batches + 1))
    ]
    batches = [questions[i : i + args.eval_batch] for i in range(0, len(questions), args.eval_batch)]
    module.generate(batch_to(collate(batches[0]), device))  # warm-up
    synchronize(device)
    seconds = 0.0
    for rows in batches[1:]:
        batch = batch_to(collate(rows), device)
        seconds += timed(lambda b=batch: module.generate(b), device)[1]
    per_second = args.eval_batch * args.eval_batches / seconds
    return {
        "questions_per_second": round(per_second, 2),
        "pope_9000_minutes": round(POPE_QUESTIONS / per_second / 60, 2),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["bench", *sorted(FULL_SIZES)], default="bench")
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=None, help="default: the largest that fits (GPU), 1 (CPU)")
    parser.add_argument("--lora-r", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--eval-batch", type=int, default=16)
    parser.add_argument("--eval-batches", type=int, default=8)
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak")
    args = parser.parse_args()
    device = torch.device(args.accelerator)
    if device.type == "cuda" and args.peak_tflops is None:
        name = torch.cuda.get_device_name()
        known = [peak for key, peak in PEAK_TFLOPS.items() if key in name]
        if not known:
            parser.error(f"no known bf16 peak for {name}: give --peak-tflops")
        args.peak_tflops = known[0]
    if args.model == "bench":
        args.seq = min(args.seq, 1024)  # a 4-layer model at 441 image tokens: rows of up to 1024 tokens
    image = f"{tempfile.mkdtemp()}/image.png"
    Image.new("RGB", (448, 448), "teal").save(image)
    probe, template = build(args, train=False)
    sample = {"id": "probe", "image": image, "conversations": [{"from": "human", "value": "<image>\nQ"}]}
    ids = Collator(probe.processor, template)([sample])["input_ids"]
    args.image_tokens = int((ids == probe.family.image_token_id(probe.hf)).sum())
    tokenizer = probe.processor.tokenizer
    del probe
    samples = training_samples(args, image, 64, tokenizer)
    training = {}
    for packing in (False, True):
        for checkpointing in (False, True):
            name = f"{'packed' if packing else 'padded'}{'+checkpointing' if checkpointing else ''}"
            training[name] = train_mode(args, samples, packing, checkpointing, device)
            released(device)
    print(
        json.dumps(
            {
                "bench": "scale",
                "model": args.model,
                "seq": args.seq,
                "lora_r": args.lora_r,
                "image_tokens": args.image_tokens,
                "training": training,
                "evaluation": eval_speed(args, image, device),
                "device": device_label(device),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
