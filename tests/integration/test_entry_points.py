"""train.py and evaluate.py as a user runs them: from a temp dir, offline, through Hydra."""

import hashlib
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from sinkflow.benchmarks.base import BENCHMARKS
from sinkflow.data.predictions import read_predictions
from sinkflow.eval.callback import RUN_MEASURES
from sinkflow.eval.results import grouped_scores

pytestmark = pytest.mark.slow  # every test runs train.py or evaluate.py in a subprocess

ROOT = Path(__file__).resolve().parents[2]
SMALL_DATA = ["dataset.prepare.n_train=32", "dataset.prepare.n_eval=6", "dataset.batch_size=8"]
# The shapes evaluation sets (each benchmark module adds its own); every one holds at least 16 questions at n_eval=6.
SHAPES_SETS = list(OmegaConf.load(ROOT / "conf" / "dataset" / "shapes.yaml").eval_sets)
CONTRACT = {"benchmark", "id", "question", "answer", "prediction", "prompt"}  # docs/contracts.md#predictions-file


def run(script, args, cwd, env):
    """Run an entry point in a fresh interpreter; fail with its output if it fails."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / script), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def test_train_debug_from_a_temp_dir(tmp_path, env):
    out = tmp_path / "run"
    proc = run("train.py", ["trainer=debug", "logger=none", *SMALL_DATA, f"hydra.run.dir={out}"], tmp_path, env)
    assert proc.stdout.count("┃ metric") == 1 and "DataLoader 0" not in proc.stdout  # one results table, sinkflow's
    console = proc.stdout + proc.stderr
    assert console.count("GPU available:") == 1 and "Tip:" not in console  # Lightning's lines once, no advertisement
    records = read_predictions(out / "predictions.jsonl")
    assert records and all(CONTRACT <= set(r) for r in records)
    assert {r["benchmark"] for r in records} <= set(SHAPES_SETS)
    assert all(r["prompt"].endswith("ASSISTANT:") and "<image>" in r["prompt"] for r in records)
    metrics = json.loads((out / "metrics.json").read_text())
    # MME scores are in official points; sink statistics are counts and norms; the run's measures are rates, times,
    # tokens and megabytes
    fractions = {k: v for k, v in metrics.items() if not k.startswith(("mme/", "sinks/", *RUN_MEASURES))}
    assert all(0.0 <= v <= 1.0 for v in fractions.values()) and any(k.endswith("/accuracy") for k in metrics)
    export = out / "checkpoints" / "export"
    assert (export / "adapter" / "adapter_config.json").exists() and (export / "projector.safetensors").exists()
    # The default trains DIYSink's Dual-MLP with LoRA: its two projectors are exported with the adapter.
    assert json.loads((export / "export.json").read_text())["strategy"] == "DualMLP"
    assert (export / "strategy.safetensors").exists()
    assert (tmp_path / "data").is_dir(), "data is generated under the project root, not the package"
    results = json.loads((out / "results.json").read_text())
    assert grouped_scores(metrics) == results["results"] and results["parser"] == "official"
    assert results["scored"] == dict(Counter(r["benchmark"] for r in records))
    # trainer=debug answers one batch: the counts show how much of each set the scores cover
    assert set(results["eval_sets"]) == set(SHAPES_SETS) and sum(results["scored"].values()) == len(records)
    assert all(s["asked"] == s["questions"] > 0 for s in results["eval_sets"].values())
    assert sum(s["asked"] for s in results["eval_sets"].values()) > len(records)
    model = results["model"]["checkpoint"]
    config_file = Path(model["source"]) / "config.json"
    assert model["sha256"]["config.json"] == hashlib.sha256(config_file.read_bytes()).hexdigest()
    exported = results["weights"]["export"]["sha256"]
    assert (
        exported["adapter/adapter_config.json"]
        == hashlib.sha256((export / "adapter" / "adapter_config.json").read_bytes()).hexdigest()
    )
    assert results["sink_strategy"]["strategy"]["_target_"].endswith("DualMLP") and results["seed"] == 0
    assert results["overrides"] == ["trainer=debug", "logger=none", *SMALL_DATA]
    assert "train.py" in results["command"] and results["versions"]["sinkflow"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, hermetic_env):
    """A short real training run with W&B offline, its checkpoint and its test predictions.

    Trained with `none`, so that the training-free strategies and cot_route can route its model."""
    tmp = tmp_path_factory.mktemp("trained")
    env = {**os.environ, **hermetic_env, "SINKFLOW_ROOT": str(tmp), "HYDRA_FULL_ERROR": "1"}
    out = tmp / "run"
    run(
        "train.py",
        [
            "logger=wandb",
            "logger.wandb.log_export=true",
            "sink_strategy=none",
            "trainer.max_steps=6",
            "trainer.val_check_interval=3",
            *SMALL_DATA,
            "dataset.limit_eval=16",
            f"hydra.run.dir={out}",
        ],
        tmp,
        env,
    )
    return tmp, env, out


def test_train_writes_checkpoint_logs_and_wandb_offline(trained_run):
    _, _, out = trained_run
    assert (out / "checkpoints" / "last.ckpt").exists()
    assert (out / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    offline = list((out / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("run-*.wandb"))


def test_the_trained_run_logs_to_one_named_wandb_run(trained_run, wandb_offline_runs):
    """The run's W&B run (offline): named after its overrides, typed `train`, holding the composed config, the
    loss curves, the sink histograms of validation and test, the prediction table and, asked for, the export."""
    _, _, out = trained_run
    (run,) = wandb_offline_runs(out / "wandb")
    assert run.name.startswith("logger=wandb,logger.wandb.log_export=true,sink_strategy=none,trainer.max_steps=6,")
    assert run.job_type == "train" and run.group == "" and run.exit_code == 0  # a single run: no sweep, no group
    assert run.config["sink_strategy"]["strategy"]["_target_"].endswith("NoneStrategy")
    assert run.config["trainer"]["max_steps"] == 6 and run.config["params/trainable"] > 0
    for stage in ("val", "test"):
        assert {f"{stage}/sinks/per_image_hist/_type", f"{stage}/sinks/log10_norm_hist/_type"} <= run.logged
    assert {"train/loss_curves/_type", "test/predictions/_type", "test/pope/f1_mean"} <= run.logged
    (export,) = [artifact for artifact in run.artifacts if artifact.type == "export"]
    assert {"export.json", "projector.safetensors", "adapter/adapter_config.json"} <= set(export.files)
    # The prediction table, as W&B stores it offline: an artifact holding the table and the images in its cells.
    (table_artifact,) = [artifact for artifact in run.artifacts if artifact.type == "run_table"]
    table = json.loads(table_artifact.files["test/predictions.table.json"].read_text())
    assert table["columns"][3:8] == ["image", "question", "answer", "prediction", "correct"]
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert rows and all(
        row["image"]["_type"] == "image-file" and row["image"]["path"] in table_artifact.files for row in rows
    )
    records = {(r["benchmark"], str(r["id"])): r for r in read_predictions(out / "predictions.jsonl")}
    assert all(
        row["correct"] is BENCHMARKS[row["benchmark"]].correct(records[(row["benchmark"], row["id"])], "official")
        for row in rows
    )


def test_evaluate_checkpoint_reproduces_train_predictions_and_resumes(trained_run):
    tmp, env, out = trained_run
    ckpt = out / "checkpoints" / "last.ckpt"
    eval_out = tmp / "eval"
    args = [f"ckpt_path={ckpt}", *SMALL_DATA, "dataset.limit_eval=16", f"hydra.run.dir={eval_out}"]
    proc = run("evaluate.py", args, tmp, env)
    assert "metrics" in proc.stdout

    def by_key(path):
        return {(r["benchmark"], r["id"]): r["prediction"] for r in read_predictions(path)}

    def measured(path):  # everything but the run's own measures (wall clock, batches), which no two runs share
        return {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith(RUN_MEASURES)}

    trained = by_key(out / "predictions.jsonl")
    evaluated = by_key(eval_out / "predictions.jsonl")
    assert evaluated == trained and len(evaluated) == 16 * len(SHAPES_SETS)

    # Interrupt: keep the first 10 lines; a rerun completes the file without duplicates.
    lines = (eval_out / "predictions.jsonl").read_text().splitlines(keepends=True)
    (eval_out / "predictions.jsonl").write_text("".join(lines[:10]))
    first = measured(eval_out / "metrics.json")
    assert first == measured(out / "metrics.json")
    assert first["sinks/precision"] == 1.0 and first["sinks/per_image"] == 2.0  # measurements too, not only scores
    proc = run("evaluate.py", args, tmp, env)
    assert f"resuming: 10 of {16 * len(SHAPES_SETS)} questions already predicted" in proc.stdout + proc.stderr
    assert "sinks/* cover the questions answered now, not the 10 already in" in proc.stdout + proc.stderr
    assert by_key(eval_out / "predictions.jsonl") == trained
    assert len(read_predictions(eval_out / "predictions.jsonl")) == 16 * len(SHAPES_SETS)
    metrics = json.loads((eval_out / "metrics.json").read_text())
    scores = {k: v for k, v in measured(eval_out / "metrics.json").items() if not k.startswith("sinks/")}
    assert scores == {k: v for k, v in first.items() if not k.startswith("sinks/")}  # every question scored

    # A finished evaluation run again: nothing left to answer, the file is scored again and the table printed.
    proc = run("evaluate.py", args, tmp, env)
    assert "every question is already in" in proc.stdout + proc.stderr and "pope/f1_mean" in proc.stdout
    assert json.loads((eval_out / "metrics.json").read_text()) == metrics


def test_a_strategy_given_beside_a_checkpoint_is_not_silently_replaced_by_its_own(trained_run):
    tmp, env, out = trained_run
    proc = subprocess.run(
        [sys.executable, str(ROOT / "evaluate.py"), f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}"]
        + ["sink_strategy=sink_front", "sink_strategy.detector.tau=80", f"hydra.run.dir={tmp / 'refused'}"],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 1 and not (tmp / "refused" / "predictions.jsonl").exists()
    assert (
        "sink_strategy=sink_front sink_strategy.detector.tau=80: with ckpt_path the run routes with the strategy its "
        "checkpoint trained with (none), so these would be ignored; add use_checkpoint_strategy=false"
    ) in proc.stderr


def test_evaluate_from_the_export_equals_evaluate_from_the_checkpoint(trained_run):
    tmp, env, out = trained_run
    exported = tmp / "from_export"
    run(
        "evaluate.py",
        [
            f"ckpt_path={out / 'checkpoints' / 'export'}",
            *SMALL_DATA,
            "dataset.limit_eval=16",
            f"hydra.run.dir={exported}",
        ],
        tmp,
        env,
    )
    assert read_predictions(exported / "predictions.jsonl") == read_predictions(out / "predictions.jsonl")


def test_multirun_sweep_writes_one_run_and_one_wandb_run_per_job_under_the_working_dir(
    tmp_path, env, wandb_offline_runs
):
    """Before, Lightning reused job 0's W&B run for job 1: one run held both configs, and job 1 had none.
    (trainer=debug would not do: fast_dev_run turns the loggers off.)"""
    env = {k: v for k, v in env.items() if k != "SINKFLOW_ROOT"}  # default root: the working directory
    short = ["trainer.max_steps=1", "trainer.val_check_interval=1", "dataset.limit_eval=1"]
    proc = run("train.py", ["-m", "logger=wandb", *short, *SMALL_DATA, "model.optim.lr=1e-3,2e-3"], tmp_path, env)
    assert "Launching 2 jobs locally" in proc.stdout + proc.stderr
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    jobs = sorted(sweep.glob("*/metrics.json"))
    assert [p.parent.name for p in jobs] == ["0", "1"]
    assert (tmp_path / "data").is_dir()
    common = ",".join(["logger=wandb", *short, *SMALL_DATA])
    for job, lr in (("0", 0.001), ("1", 0.002)):
        (wandb_run,) = wandb_offline_runs(sweep / job / "wandb")  # its own run, in its own folder
        assert wandb_run.config["model"]["optim"]["lr"] == lr and wandb_run.exit_code == 0
        assert wandb_run.name == f"{common},model.optim.lr={lr:g}"
        assert wandb_run.group == f"train/{sweep.name}" and wandb_run.job_type == "train"
        assert "test/open/accuracy" in wandb_run.logged


def test_training_free_sweep_tabulates_every_strategy(trained_run):
    from sinkflow.sinks.strategies.base import STRATEGIES

    training_free = {name for name, cls in STRATEGIES.items() if cls.training_free and not cls.prunes}
    tmp, env, out = trained_run
    sweep = tmp / "sweep"
    proc = run(
        "evaluate.py",
        [
            "experiment=training_free_sweep",
            f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}",
            *SMALL_DATA,
            "dataset.limit_eval=16",
            f"hydra.sweep.dir={sweep}",
        ],
        tmp,
        env,
    )
    assert f"Launching {len(training_free)} jobs locally" in proc.stdout + proc.stderr
    lines = (sweep / "table.md").read_text().splitlines()
    assert lines[0].startswith("| job | sink_strategy | open/global/accuracy | open/local/accuracy |")
    rows = {line.strip("| ").split(" | ")[1]: line.strip("| ").split(" | ") for line in lines[2:]}
    assert set(rows) == training_free
    assert not any("failed" in row or "missing" in row for row in rows.values())
    # The `none` row is the trained run's own evaluation, reproduced.
    trained = json.loads((out / "metrics.json").read_text())
    none = rows["none"]
    assert none[2:4] == [f"{trained['open/global/accuracy']:.3f}", f"{trained['open/local/accuracy']:.3f}"]
    assert (sweep / "table.md").read_text() in proc.stdout


def test_cot_route_records_each_decision_and_logs_the_routing_time(trained_run):
    import csv

    tmp, env, out = trained_run
    routed = tmp / "cot_route"
    run(
        "evaluate.py",
        [
            "sink_strategy=cot_route",
            "use_checkpoint_strategy=false",
            "logger=csv",
            *SMALL_DATA,
            f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}",
            "dataset.limit_eval=4",
            f"hydra.run.dir={routed}",
        ],
        tmp,
        env,
    )
    records = read_predictions(routed / "predictions.jsonl")
    # One decision per image: a list for a question with several images (MMMU's).
    decisions = [d for r in records for d in (r["routing"] if isinstance(r["routing"], list) else [r["routing"]])]
    assert len(records) == 4 * len(SHAPES_SETS) and len(decisions) >= len(records)
    assert all(d["route"] in ("sinks_only", "others_only", "both") for d in decisions)
    assert all({"image", "question", "image_answer", "question_answer"} <= set(d) for d in decisions)
    (logged,) = list(csv.DictReader(next(routed.glob("csv/**/metrics.csv")).open()))[-1:]
    metrics = json.loads((routed / "metrics.json").read_text())
    assert metrics["routing/seconds_per_image"] > 0
    assert float(logged["test/routing/seconds_per_image"]) == pytest.approx(metrics["routing/seconds_per_image"])
    routes = ("sinks_only", "others_only", "both")
    shares = {key: metrics[key] for key in (f"routing/{route}" for route in routes) if key in metrics}
    assert sum(shares.values()) == pytest.approx(1.0)
    for key, share in shares.items():
        assert share == sum(d["route"] == key.split("/")[1] for d in decisions) / len(decisions)
    # Every shapes image is symbolic: the image-type accuracy is the share of decisions that said so.
    assert all(r["image_type"] == "symbolic" for r in records)
    assert metrics["routing/count/image"] == len(decisions)
    assert metrics["routing/accuracy/image"] == sum(d["image"] == "symbolic" for d in decisions) / len(decisions)


def test_calibrate_writes_summary_and_plots_and_logs_them_to_wandb(
    tmp_path, env, shared_image_sets, wandb_offline_runs
):
    out = tmp_path / "calibration"
    args = ["task=calibrate", "logger=wandb", *SMALL_DATA, *shared_image_sets, f"hydra.run.dir={out}"]
    run("analyze.py", args, tmp_path, env)
    summary = json.loads((out / "calibration.json").read_text())
    assert summary["images"] == 6 and summary["tokens_per_image"] == 64  # the tiny base: 8-px patches of 64 px
    assert summary["norm_max"] == pytest.approx(150.0, rel=1e-5)  # the simulated sinks' norm
    assert summary["norm_quantiles"]["q50"] < summary["suggested_tau"] < 150.0
    assert summary["sinks_per_image_at_suggestion"] == {"mean": 2.0, "histogram": {"2": 6}}
    assert summary["simulated_sinks"]["precision_at_suggestion"] == 1.0
    for name in ("norm_histogram.png", "sorted_norms.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Its W&B run: the composed config (not only `_wandb`), the figures, the summary as scalars and as a table.
    (wandb_run,) = wandb_offline_runs(out / "wandb")
    assert wandb_run.job_type == "analyze" and wandb_run.exit_code == 0
    assert wandb_run.config["task"] == "calibrate" and wandb_run.config["calibrate"]["max_images"] == 512
    assert {"calibrate/norm_histogram/_type", "calibrate/sorted_norms/_type", "calibrate/calibration/_type"} <= (
        wandb_run.logged
    )
    assert "calibrate/suggested_tau" in wandb_run.logged


def test_tiny_qwen_runs_the_default_pipeline_and_its_checkpoint_evaluates_the_same(tmp_path, env):
    import csv

    out = tmp_path / "qwen"
    run(
        "train.py",
        [
            "model=tiny_qwen2_vl",
            "logger=csv",
            "trainer.max_steps=4",
            *SMALL_DATA,
            "dataset.limit_eval=8",
            f"hydra.run.dir={out}",
        ],
        tmp_path,
        env,
    )
    export = json.loads((out / "checkpoints" / "export" / "export.json").read_text())
    assert export["projector_module"] == "model.visual.merger"
    trained = {(r["benchmark"], r["id"]): r["prediction"] for r in read_predictions(out / "predictions.jsonl")}
    prompts = [r["prompt"] for r in read_predictions(out / "predictions.jsonl")]
    assert len(trained) == 8 * len(SHAPES_SETS) and all("<|image_pad|>" in p for p in prompts)
    rows = list(csv.DictReader((out / "csv" / "version_0" / "metrics.csv").read_text().splitlines()))
    assert any(r.get("val/sinks/precision") == "1.0" for r in rows), "the simulated sinks are found on Qwen too"
    evaluated = tmp_path / "qwen_eval"
    run(
        "evaluate.py",
        [
            f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}",
            *SMALL_DATA,
            "dataset.limit_eval=8",
            f"hydra.run.dir={evaluated}",
        ],
        tmp_path,
        env,
    )
    reproduced = read_predictions(evaluated / "predictions.jsonl")
    assert {(r["benchmark"], r["id"]): r["prediction"] for r in reproduced} == trained


def test_evaluate_on_the_real_pope_files_with_stand_in_images(tmp_path, env, pope_coco, other_eval_sets):
    """`dataset=benchmarks` reads the original POPE question files; COCO images are replaced by generated ones."""
    from PIL import Image

    fixtures = pope_coco
    images = tmp_path / "coco"
    images.mkdir()
    needed = {
        json.loads(line)["image"] for f in fixtures.glob("coco_pope_*.json") for line in f.read_text().splitlines()[:5]
    }
    for i, name in enumerate(sorted(needed)):
        Image.new("RGB", (64, 64), (40 * i % 255, 90, 160)).save(images / name)
    out = tmp_path / "pope"
    run(
        "evaluate.py",
        [
            "dataset=benchmarks",
            f"dataset.eval_sets.pope.paths={fixtures}",
            f"dataset.eval_sets.pope.image_root={images}",
            *other_eval_sets("benchmarks", keep="pope"),
            "dataset.limit_eval=5",
            f"hydra.run.dir={out}",
        ],
        tmp_path,
        env,
    )
    records = read_predictions(out / "predictions.jsonl")
    assert len(records) == 5 and {r["category"] for r in records} == {"random"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert {k for k in metrics if not k.startswith(("sinks/", *RUN_MEASURES))} == {
        f"pope/random/{m}" for m in ("accuracy", "precision", "recall", "f1", "yes_ratio")
    } | {"pope/f1_mean"}


def test_a_missing_benchmark_says_what_to_download(tmp_path, env):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "evaluate.py"), "dataset=benchmarks", f"hydra.run.dir={tmp_path / 'out'}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode != 0
    assert "evaluation set 'pope': POPE questions not found" in proc.stderr
    assert "To obtain pope: coco_pope_{random,popular,adversarial}.json from github.com/RUCAIBox/POPE" in proc.stderr


def test_diysink_two_stages_then_rew_run_end_to_end(tmp_path, env):
    """Stage 1 (sinks, others), stage 2 from their exported projectors, then ReW from stage 2, as the experiment
    configs describe."""
    import torch
    from safetensors.torch import load_file

    short = ["logger=none", "trainer.max_steps=2", "trainer.val_check_interval=2", *SMALL_DATA, "dataset.limit_eval=4"]
    exported = {}
    for stage in ("sinks", "others"):
        out = tmp_path / stage
        run(
            "train.py",
            ["experiment=diysink_stage1", f"sink_strategy.strategy.stage={stage}", *short, f"hydra.run.dir={out}"],
            tmp_path,
            env,
        )
        exported[stage] = out / "checkpoints" / "export" / "strategy.safetensors"
    out = tmp_path / "stage2"
    run(
        "train.py",
        [
            "experiment=diysink_stage2",
            f"sink_strategy.strategy.sink_projector_from={exported['sinks']}",
            f"sink_strategy.strategy.other_projector_from={exported['others']}",
            *short,
            f"hydra.run.dir={out}",
        ],
        tmp_path,
        env,
    )
    stage2 = load_file(out / "checkpoints" / "export" / "strategy.safetensors")
    assert (out / "checkpoints" / "export" / "adapter" / "adapter_config.json").exists()  # LoRA in stage 2
    assert set(stage2) == set(load_file(exported["sinks"]))  # both projectors, same layout
    # ReW on top of the whole stage-2 model (its adapter included), as the README chain runs it.
    rew = tmp_path / "rew"
    run("train.py", ["experiment=diysink_rew", f"init_from={out}", *short, f"hydra.run.dir={rew}"], tmp_path, env)
    assert json.loads((rew / "checkpoints" / "export" / "export.json").read_text())["lora"] is True
    trained = torch.load(rew / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert trained and all(key.startswith("strategy.router.") for key in trained)  # the router alone trained
    # Routing it with a strategy that needs the model's own projector fails, naming why.
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "evaluate.py"),
            "sink_strategy=sink_front",
            "use_checkpoint_strategy=false",
            f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}",
            *SMALL_DATA,
            f"hydra.run.dir={tmp_path / 'routed'}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode != 0
    assert "it was trained with strategy dual_mlp; routing it with sink_front needs a checkpoint trained" in proc.stderr


# Every other tiny model config (a new family's joins by its config alone): tiny_llava and tiny_qwen2_vl run above.
OTHER_TINY_MODELS = sorted(
    path.stem
    for path in (ROOT / "conf" / "model").glob("tiny_*.yaml")
    if path.stem not in {"tiny_llava", "tiny_qwen2_vl"}
)


@pytest.mark.parametrize("model", OTHER_TINY_MODELS)
def test_every_tiny_family_trains_the_default_pipeline_and_its_export_evaluates_the_same(model, tmp_path, env):
    """train.py (DIYSink's Dual-MLP with LoRA, two steps) then evaluate.py from the export, on each family's tiny model:
    the export reloads the family's projector, adapter and strategy, and answers every question as the run did."""
    out = tmp_path / "run"
    small = [*SMALL_DATA, "dataset.limit_eval=4"]
    run(
        "train.py",
        [f"model={model}", "logger=none", "trainer.max_steps=2", *small, f"hydra.run.dir={out}"],
        tmp_path,
        env,
    )
    trained = {(r["benchmark"], r["id"]): r["prediction"] for r in read_predictions(out / "predictions.jsonl")}
    assert len(trained) == 4 * len(SHAPES_SETS)
    export = out / "checkpoints" / "export"
    assert json.loads((export / "export.json").read_text())["strategy"] == "DualMLP"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["sinks/per_image"] > 0, "the planted sinks are found"
    evaluated = tmp_path / "eval"
    run("evaluate.py", [f"ckpt_path={export}", *small, f"hydra.run.dir={evaluated}"], tmp_path, env)
    reproduced = read_predictions(evaluated / "predictions.jsonl")
    assert {(r["benchmark"], r["id"]): r["prediction"] for r in reproduced} == trained
