"""Peak memory of the `propagation` analysis against a plain forward of the same batch (target <= 1.3x).

The tiny LLaVA architecture at a size where attention matters (224 px images in 14-px patches = 256 visual
tokens, Llama 4x512 with 8 heads), simulated sinks planted, a batch of generation prompts. Each prompt first gets
its greedy answer (`propagation.query_inputs`), then the same prompt + answer sequence is run three ways:
- `plain`: the LLM forward as evaluation runs it (SDPA, no capture);
- `propagation`: that forward with the analysis' hooks (attention rows of the answer tokens + visual-token
  states per layer, `capture.AttentionRows` / `visual_layer_inputs`), i.e. what `propagation.measure` runs;
- `naive_output_attentions`: eager attention with `output_attentions=True` (every layer's [B, H, T, T] map).
Peak memory is what the forward allocates at its peak on top of what was allocated before it: on CUDA the
allocator's peak, on CPU the running total of torch's profiler allocation events (tensors only; resident-set
figures would mix in the allocator's caching). Each variant is warmed up once. Prints one JSON line; ratios
are against `plain`.

    python bench/analysis_memory.py [--batch 8] [--image-size 224] [--new-tokens 20] [--accelerator cuda]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from common import SIZES, device_label
from sinkflow.analysis.capture import AttentionRows, decoder_layers, visual_layer_inputs
from sinkflow.analysis.context import visual_tokens
from sinkflow.analysis.massive_dims import MassiveActivations, MassiveCriterion
from sinkflow.analysis.propagation import query_inputs
from sinkflow.benchmarks.open_qa import load_open_qa
from sinkflow.data.collate import Collator, batch_to
from sinkflow.data.datamodule import eval_sample
from sinkflow.data.templates import VicunaV1
from sinkflow.models.families.llava import LlavaFamily
from sinkflow.models.tiny import TinyLlavaSpec, build_tiny_llava
from sinkflow.module import SinkflowModule
from sinkflow.shapes import generate_shapes
from sinkflow.sinks.detectors.norm_threshold import NormThreshold
from sinkflow.sinks.simulated import SimulatedSinks
from sinkflow.sinks.strategies.none import NoneStrategy


def peak_bytes(function: Callable[[], None], device: torch.device) -> int:
    """Memory `function()` allocates at its peak beyond what is allocated when it starts (tensors only)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        function()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    # CPU: the profiler's allocation events carry the running total allocated since profiling started.
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        function()
    with tempfile.TemporaryDirectory() as folder:
        prof.export_chrome_trace(f"{folder}/trace.json")
        events = json.loads(Path(folder, "trace.json").read_text())["traceEvents"]
    return max([0] + [e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"])


def measure(args, device: torch.device) -> dict:
    """Peaks of the three variants on the same seeded model, batch and answer."""
    torch.manual_seed(0)
    model, processor = build_tiny_llava(TinyLlavaSpec(image_size=args.image_size, patch_size=args.patch_size, **SIZES))
    module = SinkflowModule(
        model.to(device).eval(),
        processor,
        LlavaFamily(),
        NoneStrategy(),
        NormThreshold(),
        simulated_sinks=SimulatedSinks(k=2, norm=150.0),
    ).eval()
    root = generate_shapes(tempfile.mkdtemp(), n_train=1, n_eval=args.batch, image_size=64)
    items = load_open_qa(root / "open" / "open.jsonl", root / "eval_images")[: args.batch]
    batch = batch_to(Collator(processor, VicunaV1(), generate=True)([eval_sample(i) for i in items]), device)
    with torch.no_grad():
        tokens = visual_tokens(module, batch)
        inputs, columns, _ = query_inputs(module, tokens, "generated", args.new_tokens)
    layers = range(len(decoder_layers(module.hf)))
    hf = module.hf

    def plain():
        hf(**inputs, use_cache=False, logits_to_keep=1)

    def propagation():
        massive = MassiveActivations(MassiveCriterion(), tokens, len(layers))
        with (
            AttentionRows(hf, layers, columns, inputs["attention_mask"]),
            visual_layer_inputs(hf, tokens.rows, tokens.columns, massive),
        ):
            hf(**inputs, use_cache=False, logits_to_keep=1)

    def naive():
        hf(**inputs, use_cache=False, logits_to_keep=1, output_attentions=True)

    peaks = {}
    with torch.no_grad():
        for name, function in (("plain", plain), ("propagation", propagation), ("naive_output_attentions", naive)):
            if name == "naive_output_attentions":
                hf.set_attn_implementation("eager")
            function()  # warm-up: one-off allocations count against no variant
            peaks[name] = peak_bytes(function, device)
    ratios = {name: round(value / peaks["plain"], 3) for name, value in peaks.items() if name != "plain"}
    return {
        "bench": "analysis_memory",
        "peak_mib_above_start": {name: round(value / 2**20, 2) for name, value in peaks.items()},
        "ratio_to_plain": ratios,
        "target": 1.3,
        "within_target": ratios["propagation"] <= 1.3,
        "batch": args.batch,
        "seq_len": int(inputs["attention_mask"].shape[1]),
        "image_tokens": int(tokens.valid[0].sum()),
        "query_rows": int(columns.shape[1]),
        "llm_layers": len(layers),
        "device": device_label(device),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--patch-size", type=int, default=14)
    parser.add_argument("--new-tokens", type=int, default=20, help="answer tokens whose attention rows are taken")
    parser.add_argument("--accelerator", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args()
    print(json.dumps(measure(args, torch.device(args.accelerator))), flush=True)


if __name__ == "__main__":
    main()
