"""`results.json`: a run's scores with what a reviewer needs to trust them, in the spirit of lmms-eval's results file.

`metrics.json` stays the flat dict every tool reads; `results.json` beside it adds, for the same scores: each
benchmark's metrics, the parser, how many questions were scored (and, for a run, how many each evaluation set holds and
how many `dataset.limit_eval` asked), the
model's source with its hub revision and the SHA-256 of its files, the strategy and detector settings, the trained
weights' hashes, the package versions, the git commit, the seed, the dates and the command. Every evaluation writes
it (`train.py` after its test, `evaluate.py`), and so does the scoring CLI (`--results`). No torch here: the scoring
CLI imports this module.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shlex
import subprocess
import sys
from collections import Counter
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from sinkflow.data.predictions import record_key

log = logging.getLogger(__name__)

SCHEMA = "sinkflow-results/1"
PACKAGES = ("sinkflow", "torch", "transformers", "peft", "lightning", "torchmetrics", "hydra-core")
# Weight and config files identify a model; tokenizer and processor files are part of it too, and small.
HASHED_SUFFIXES = (".safetensors", ".bin", ".json", ".model", ".txt", ".jinja")
LARGE_BYTES = 1 << 30  # hashing more than this is worth a log line
DIGEST_CACHE = "sha256.json"  # in paths.cache_dir: the local files' hashes, read once per file version


def now() -> str:
    """The current time in UTC, ISO 8601 to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def grouped_scores(metrics: dict[str, float]) -> dict[str, dict[str, float]]:
    """The flat metric keys grouped by their first part (`pope/adversarial/f1` -> results["pope"]["adversarial/f1"])."""
    out: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        head, _, rest = key.partition("/")
        out.setdefault(head, {})[rest or head] = value
    return out


def scored_counts(records: list[dict]) -> dict[str, int]:
    """Per benchmark, the questions scored: each `(benchmark, id)` once, as `score_records` counts them."""
    return dict(sorted(Counter(benchmark for benchmark, _ in {record_key(r) for r in records}).items()))


def file_sha256(path: Path, cache: Path | None = None) -> str:
    """A file's SHA-256; for a file of the Hugging Face cache, the name of the blob it links to (the hub stores
    large files under their SHA-256), so a cached 7B model is identified without reading it. Other files are read
    once per `cache` (a JSON file of digests by path, size and modification time): the jobs of a sweep over a local
    7B model do not each read its weights again."""
    target = path.resolve()
    if path.is_symlink() and target.parent.name == "blobs" and len(target.name) == 64:
        return target.name
    stat = target.stat()
    key = f"{target}:{stat.st_size}:{stat.st_mtime_ns}"
    known = read_digests(cache) if cache is not None else {}
    if key in known:
        return known[key]
    digest = hashlib.sha256()
    with target.open("rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    if cache is not None:
        write_digests(cache, {**read_digests(cache), key: digest.hexdigest()})
    return digest.hexdigest()


def read_digests(cache: Path) -> dict[str, str]:
    """The digests a cache file remembers (none if it is missing; an unreadable one is warned about and rebuilt)."""
    if not cache.is_file():
        return {}
    try:
        return json.loads(cache.read_text())
    except (OSError, ValueError) as err:
        log.warning("%s: unreadable digest cache (%s): hashing again and rewriting it", cache, err)
        return {}


def write_digests(cache: Path, digests: dict[str, str]) -> None:
    """Replace the cache file whole (parallel jobs: the last writer wins, and a lost entry is only hashed again)."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_name(f"{cache.name}.{os.getpid()}")
    partial.write_text(json.dumps(digests, indent=1))
    os.replace(partial, cache)


def files_sha256(folder: Path, cache: Path | None = None) -> dict[str, str]:
    """SHA-256 of the files of a model or export folder that define it (weights, configs, tokenizer)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in HASHED_SUFFIXES)
    total = sum(p.stat().st_size for p in files if not p.is_symlink())
    if total > LARGE_BYTES:
        log.info("hashing %.1f GB of %s for results.json (once: %s remembers it)", total / 1e9, folder, cache)
    return {str(p.relative_to(folder)): file_sha256(p, cache) for p in files}


def source_provenance(source: str, cache: Path | None = None) -> dict:
    """Where a model came from: a local folder (with its files' hashes) or a hub id (with the revision of the cached
    snapshot it was loaded from, and its files' hashes); `cache` remembers the hashes read (`file_sha256`)."""
    path = Path(source)
    if path.is_dir():
        return {"source": str(path.resolve()), "revision": None, "sha256": files_sha256(path, cache)}
    if path.is_file():
        return {"source": str(path.resolve()), "revision": None, "sha256": {path.name: file_sha256(path, cache)}}
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(source, "config.json")
    except ValueError:  # not a hub id either
        return {"source": source, "revision": None, "sha256": {}, "note": "neither a local path nor a hub id"}
    if not isinstance(cached, str):
        return {"source": source, "revision": None, "sha256": {}, "note": "not in the Hugging Face cache"}
    snapshot = Path(cached).parent
    return {"source": source, "revision": snapshot.name, "sha256": files_sha256(snapshot, cache)}


def run_provenance(
    cfg: DictConfig, source: str, weights: dict[str, str | Path | None], eval_counts: dict[str, dict[str, int]]
) -> dict:
    """What produced an evaluation's answers: the evaluation sets' sizes (`eval_counts`: questions, asked), the model
    (config and files), the strategy and detector, the trained weights on top (`weights`: name -> checkpoint or export
    path, None when unset), the seed, the job's overrides and the whole resolved config. Local files' hashes are
    remembered in `<paths.cache_dir>/sha256.json`."""
    cache = Path(cfg.paths.cache_dir) / DIGEST_CACHE
    return {
        "eval_sets": eval_counts,
        "model": {
            "checkpoint": source_provenance(source, cache),
            "family": OmegaConf.select(cfg, "model.family._target_"),
            "dtype": cfg.model.dtype,
        },
        "sink_strategy": OmegaConf.to_container(cfg.sink_strategy, resolve=True),
        "weights": {
            name: source_provenance(str(path), cache) for name, path in weights.items() if path and Path(path).exists()
        },
        "seed": cfg.seed,
        "overrides": list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else None,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }


def recorded_provenance(predictions: Path) -> dict:
    """For the scoring CLI: what the run that wrote `predictions` recorded (its results.json, else its Hydra config),
    and the predictions file's own hash."""
    folder = predictions.parent if predictions.is_file() else predictions
    hashes = files_sha256(predictions) if predictions.is_dir() else {predictions.name: file_sha256(predictions)}
    out: dict = {"predictions": {"path": str(predictions.resolve()), "sha256": hashes}}
    results, config = folder / "results.json", folder / ".hydra" / "config.yaml"
    if results.is_file():
        recorded = json.loads(results.read_text())
        out.update({k: recorded[k] for k in ("model", "sink_strategy", "weights", "seed", "config") if k in recorded})
        out["recorded_by"] = str(results)
    elif config.is_file():
        run = OmegaConf.load(config)
        out.update(
            model={"checkpoint": {"source": OmegaConf.select(run, "model.checkpoint")}},
            sink_strategy=OmegaConf.to_container(run.sink_strategy) if "sink_strategy" in run else None,
            seed=run.get("seed"),
        )
        out["recorded_by"] = str(config)
    else:
        out["recorded_by"] = None  # the model is unknown: nothing beside the predictions says what answered
    return out


def versions() -> dict[str, str | None]:
    """Python and the installed versions of the packages a score depends on (None: not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = None
    return out


def git_state() -> dict:
    """The commit of the sinkflow checkout that ran, and whether it had uncommitted changes (None: not a checkout)."""
    root = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def command(argv: list[str] | None = None) -> str:
    """The command line this process was started with (`argv`: the arguments a CLI's `main` was given instead)."""
    return shlex.join([Path(sys.executable).name, *(sys.argv if argv is None else argv)])


def results_document(
    metrics: dict[str, float],
    records: list[dict],
    parser: str,
    provenance: dict,
    started: str,
    argv: list[str] | None = None,
) -> dict:
    """The results file's content: scores and counts from `metrics` / `records`, then `provenance` (what produced
    them: model, strategy, config...), the environment, the command (`argv`; None: this process's) and the dates."""
    return {
        "schema": SCHEMA,
        "results": grouped_scores(metrics),
        "scored": scored_counts(records),
        "parser": parser,
        **provenance,
        "versions": versions(),
        "git": git_state(),
        "command": command(argv),
        "date": {"started": started, "finished": now()},
    }


def write_results(path: Path, document: dict) -> None:
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    log.info("results written to %s", path)
