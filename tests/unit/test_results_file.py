"""results.json: scores grouped per benchmark with their question counts and the provenance of what produced them."""

import hashlib
import json
import subprocess
from importlib import metadata
from pathlib import Path

import huggingface_hub.constants

from sinkflow.eval.metrics import score_records
from sinkflow.eval.results import (
    file_sha256,
    grouped_scores,
    recorded_provenance,
    scored_counts,
    source_provenance,
)
from sinkflow.eval.score import main as score_main

ROOT = Path(__file__).resolve().parents[2]


def pope(i: int, prediction: str = "Yes") -> dict:
    return {
        "benchmark": "pope",
        "id": f"random/{i}",
        "category": "random",
        "question": "Is there a cat in the image?",
        "answer": "yes",
        "prediction": prediction,
        "prompt": "p",
    }


def test_scores_are_grouped_by_benchmark_and_keep_every_value():
    metrics = {"pope/random/f1": 0.5, "pope/f1_mean": 0.5, "all/global/accuracy": 0.25, "mme/perception": 1200.0}
    grouped = grouped_scores(metrics)
    assert grouped == {
        "pope": {"random/f1": 0.5, "f1_mean": 0.5},
        "all": {"global/accuracy": 0.25},
        "mme": {"perception": 1200.0},
    }
    assert {f"{b}/{k}": v for b, keys in grouped.items() for k, v in keys.items()} == metrics


def test_each_question_is_counted_once_per_benchmark():
    open_record = dict(pope(9), benchmark="open", id="q9")
    assert scored_counts([pope(1), pope(2), pope(1), open_record]) == {"open": 1, "pope": 2}


def test_a_local_model_is_identified_by_the_sha256_of_its_files(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llava"}')
    (tmp_path / "model.safetensors").write_bytes(b"\x00weights" * 1000)
    (tmp_path / "notes.md").write_text("not part of the model")
    provenance = source_provenance(str(tmp_path))
    assert provenance["source"] == str(tmp_path.resolve()) and provenance["revision"] is None
    assert provenance["sha256"] == {
        name: hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()
        for name in ("config.json", "model.safetensors")
    }


def test_a_local_files_hash_is_read_once_per_version_of_the_file(tmp_path, monkeypatch):
    """A sweep's jobs over a local model hash its weights once: the cache answers while the file's size and time are
    unchanged (a planted wrong digest proves it is not re-read), and a rewritten file is read again."""
    weights, cache = tmp_path / "model.safetensors", tmp_path / "cache" / "sha256.json"
    weights.write_bytes(b"first version")
    assert file_sha256(weights, cache) == hashlib.sha256(b"first version").hexdigest()
    (key,) = json.loads(cache.read_text())
    cache.write_text(json.dumps({key: "remembered"}))
    assert file_sha256(weights, cache) == "remembered"
    weights.write_bytes(b"second version, longer")
    assert file_sha256(weights, cache) == hashlib.sha256(b"second version, longer").hexdigest()
    assert len(json.loads(cache.read_text())) == 2
    cache.write_text("{torn")
    assert file_sha256(weights, cache) == hashlib.sha256(b"second version, longer").hexdigest()  # rebuilt, warned


def test_a_hub_model_gives_its_cached_revision_and_blob_hashes_without_reading_the_weights(tmp_path, monkeypatch):
    """The hub cache's snapshot files link to blobs named by their SHA-256: that name is the hash (a deliberately
    wrong blob content proves the file is not read)."""
    revision, weights_sha = "a" * 40, "b" * 64
    repo = tmp_path / "models--org--tiny"
    snapshot = repo / "snapshots" / revision
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    (snapshot / "config.json").write_text("{}")
    (repo / "blobs" / weights_sha).write_bytes(b"not the content whose hash names the blob")
    (snapshot / "model.safetensors").symlink_to(repo / "blobs" / weights_sha)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    provenance = source_provenance("org/tiny")
    assert provenance["revision"] == revision
    assert provenance["sha256"] == {"config.json": hashlib.sha256(b"{}").hexdigest(), "model.safetensors": weights_sha}
    assert source_provenance("org/absent")["note"] == "not in the Hugging Face cache"


def test_the_scoring_cli_writes_results_with_the_runs_recorded_model(tmp_path):
    """Predictions in a run folder: the results name the model and strategy of the run's Hydra config, count the
    questions, and carry the versions, the commit and the command."""
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(
        "model:\n  checkpoint: llava-hf/llava-1.5-7b-hf\n"
        "sink_strategy:\n  strategy:\n    _target_: x.SinkFront\nseed: 3\n"
    )
    predictions = run / "predictions.jsonl"
    records = [pope(1), pope(2, "No"), pope(2, "No")]
    predictions.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "results.json"
    metrics = score_main([str(predictions), "--results", str(out)])
    results = json.loads(out.read_text())
    assert metrics == score_records(records)
    assert results["results"] == grouped_scores(metrics) and results["parser"] == "official"
    assert results["scored"] == {"pope": 2}  # the file's exact repeat is merged on reading
    assert results["model"] == {"checkpoint": {"source": "llava-hf/llava-1.5-7b-hf"}}
    assert results["sink_strategy"] == {"strategy": {"_target_": "x.SinkFront"}} and results["seed"] == 3
    assert results["recorded_by"] == str(run / ".hydra" / "config.yaml")
    assert results["predictions"]["sha256"] == {
        "predictions.jsonl": hashlib.sha256(predictions.read_bytes()).hexdigest()
    }
    assert results["versions"]["torch"] == metadata.version("torch")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode == 0:  # a checkout (CI's clean clone is one)
        assert results["git"]["commit"] == head.stdout.strip()
    assert results["date"]["started"] <= results["date"]["finished"]
    assert "--results" in results["command"]


def test_a_runs_own_results_file_is_what_the_scoring_cli_records(tmp_path):
    recorded = {"model": {"checkpoint": {"source": "/m", "sha256": {"config.json": "c" * 64}}}, "seed": 1}
    (tmp_path / "results.json").write_text(json.dumps(recorded))
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text(json.dumps(pope(1)) + "\n")
    provenance = recorded_provenance(predictions)
    assert provenance["model"] == recorded["model"] and provenance["seed"] == 1
    assert provenance["recorded_by"] == str(tmp_path / "results.json")


def test_predictions_with_nothing_beside_them_record_no_model(tmp_path):
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text(json.dumps(pope(1)) + "\n")
    provenance = recorded_provenance(predictions)
    assert provenance["recorded_by"] is None and "model" not in provenance
