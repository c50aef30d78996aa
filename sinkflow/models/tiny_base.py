"""The pre-trained tiny base: a tiny LLaVA trained from scratch in full (ViT, projector, LLM) on the shapes data,
shipped in the repository (sinkflow/models/tiny_llava_shapes/, 5.3 MB of safetensors) so that the offline demo
starts from a model that sees. `make tiny-base` runs its recipe (conf/experiment/tiny_base.yaml):

    train.py experiment=tiny_base                      # stage 0 (the ViT on patch labels) + stage 1 (every weight)
    train.py experiment=tiny_base init_from=<stage 1> vision_pretraining=null model.optim.lr=1e-3 ...   # stage 2
    python -m sinkflow.models.tiny_base <stage 2 run>  # bake

`bake` turns the last run's export into an HF checkpoint (loadable with plain `from_pretrained`) and writes
`base.json` beside it: every stage's overrides, resolved recipe and minutes, the package versions, the scores and the
SHA-256 of the weights. `tiny_base_checkpoint`, the loader conf/model/tiny_llava_shapes.yaml names, checks that hash
and the sizes the config asks for.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path

from omegaconf import OmegaConf
from transformers import AutoModelForImageTextToText, AutoProcessor

from sinkflow.models.export import Export, load_export

SHIPPED = Path(__file__).with_name("tiny_llava_shapes")
INFO = "base.json"
WEIGHTS = "model.safetensors"
# What base.json keeps of the recipe run's resolved config, and of its metrics.json (the figures the README quotes).
RECIPE = ("seed", "vision_pretraining", "model", "trainer", "dataset")
HEADLINE = (
    "open/global/accuracy",
    "open/local/accuracy",
    "open/background/accuracy",
    "open/dominant_color/accuracy",
    "open/count/accuracy",
    "open/position/accuracy",
    "pope/f1_mean",
    "pope/random/f1",
    "mmstar/overall",
    "mme/perception",
    "all/global/accuracy",
    "all/local/accuracy",
)


def _started(run: Path) -> datetime:
    """The time of the run log's first line ('[2026-12-02 03:20:35,288][...'), in UTC as sinkflow logs."""
    stamp = (run / "train.log").read_text().split("]", 1)[0].lstrip("[")
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").replace(tzinfo=timezone.utc)


def _finished(run: Path) -> datetime:
    return datetime.fromisoformat(json.loads((run / "results.json").read_text())["date"]["finished"])


def _stages(run: Path) -> list[tuple[Path, dict]]:
    """The recipe's runs, first stage first: `run`, then the run its `init_from` names, and so on."""
    stages = []
    while run is not None:
        config = OmegaConf.to_container(OmegaConf.load(run / ".hydra" / "config.yaml"))
        stages.insert(0, (run, config))
        run = Path(config["init_from"]) if config.get("init_from") else None
    return stages


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tiny_base_checkpoint(directory: str | Path = SHIPPED, **sizes) -> str:
    """The shipped base's directory, after checking that its weights are the ones base.json records and that its
    spec has the sizes the model config asks for (`model.checkpoint.*`; `cache_dir` is not a size)."""
    directory = Path(directory)
    info_path = directory / INFO
    if not info_path.is_file():
        raise FileNotFoundError(f"{info_path}: the pre-trained tiny base is missing; rebuild it with `make tiny-base`")
    info = json.loads(info_path.read_text())
    digest = sha256(directory / WEIGHTS)
    if digest != info["sha256"]:
        raise ValueError(
            f"{directory / WEIGHTS}: SHA-256 {digest[:12]}... differs from {info_path} ({info['sha256'][:12]}...): "
            "the weights were changed outside `make tiny-base`"
        )
    sizes.pop("cache_dir", None)
    wrong = {k: (v, info["spec"].get(k)) for k, v in sizes.items() if info["spec"].get(k) != v}
    if wrong:
        raise ValueError(
            f"{info_path}: the shipped base was trained at other sizes than model.checkpoint asks: "
            + ", ".join(f"{k}={asked} (base: {has})" for k, (asked, has) in wrong.items())
        )
    return str(directory)


def bake(run_dir: str | Path, out_dir: str | Path = SHIPPED) -> Path:
    """The recipe run's export applied to its random starting checkpoint, saved as a plain HF checkpoint with
    base.json (recipe, scores, time, hash) in `out_dir` (replaced)."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    export = Export.read(run_dir, what="run_dir")
    if export.info["lora"] or not export.info.get("language_model"):
        raise ValueError(f"{export.path}: not a full-training export (LoRA or no language_model.safetensors)")
    source = export.info["base_checkpoint"]
    model = load_export(AutoModelForImageTextToText.from_pretrained(source), export.path)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    missing = [k for k in HEADLINE if k not in metrics]
    if missing:
        raise ValueError(f"{run_dir / 'metrics.json'}: {missing} missing (was the run tested?)")
    stages = _stages(run_dir)
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    AutoProcessor.from_pretrained(source).save_pretrained(partial)
    first = stages[0][0]
    info = {
        "spec": json.loads((Path(source) / "spec.json").read_text()),
        "command": "make tiny-base",
        "stages": [
            {
                "overrides": OmegaConf.to_container(OmegaConf.load(run / ".hydra" / "overrides.yaml")),
                "recipe": {key: config.get(key) for key in RECIPE},
                "minutes": round((_finished(run) - _started(run)).total_seconds() / 60, 1),
            }
            for run, config in stages
        ],
        "versions": json.loads((run_dir / "results.json").read_text())["versions"],
        "vision_pretraining": json.loads((first / "vision_pretraining.json").read_text()),
        "metrics": {k: metrics[k] for k in HEADLINE},
        "sha256": sha256(partial / WEIGHTS),
    }
    info["minutes"] = round(sum(stage["minutes"] for stage in info["stages"]), 1)
    (partial / INFO).write_text(json.dumps(info, indent=2) + "\n")
    shutil.rmtree(out_dir, ignore_errors=True)
    partial.rename(out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Bake a `train.py experiment=tiny_base` run into the shipped base.")
    parser.add_argument("run_dir", help="the recipe run's directory (with checkpoints/export/ and metrics.json)")
    parser.add_argument("--out", default=str(SHIPPED), help=f"where the HF checkpoint goes (default: {SHIPPED})")
    args = parser.parse_args(argv)
    print(bake(args.run_dir, args.out))


if __name__ == "__main__":
    sys.exit(main())
