"""Sweeps through Hydra's plugins, as a user runs them: an Optuna search, a sweep through the submitit launcher (the
SLURM launcher's code path, run locally) and the SLURM launcher up to sbatch. Each ends in its jobs' table."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow  # each runs train.py in a subprocess

ROOT = Path(__file__).resolve().parents[2]
SMALL = [
    "trainer=debug",
    "logger=none",
    "dataset.prepare.n_train=32",
    "dataset.prepare.n_eval=6",
    "dataset.batch_size=8",
]


@pytest.fixture()
def sweep(tmp_path, env, other_eval_sets):
    """`sweep(args, check=True, path=None)`: train.py with `args` on tiny data, answering the `open` set only, into
    <tmp>/sweep (`path`: a folder put first on PATH); the finished process. Jobs that submitit starts in fresh
    interpreters import this checkout."""
    env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))}

    def run(args: list[str], check: bool = True, path: Path | None = None) -> subprocess.CompletedProcess:
        command = [sys.executable, str(ROOT / "train.py"), *args, *SMALL, *other_eval_sets("shapes", "open")]
        proc = subprocess.run(
            [*command, f"hydra.sweep.dir={tmp_path / 'sweep'}"],
            cwd=tmp_path,
            env={**env, "PATH": f"{path}{os.pathsep}{env['PATH']}"} if path else env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert not check or proc.returncode == 0, f"train.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        return proc

    return run


def metric(job: Path, key: str = "all/global/accuracy") -> float:
    return json.loads((job / "metrics.json").read_text())[key]


def test_a_three_trial_optuna_search_keeps_the_best_trial(sweep, tmp_path):
    proc = sweep(["hparams_search=tiny_optuna", "hydra.sweeper.n_trials=3"])
    out = tmp_path / "sweep"
    jobs = [out / str(n) for n in range(3)]
    assert all((job / "metrics.json").is_file() for job in jobs) and not (out / "3").exists()
    results = yaml.safe_load((out / "optimization_results.yaml").read_text())
    assert results["best_value"] == max(metric(job) for job in jobs)
    params = results["best_params"]
    assert params["model.lora.r"] in (4, 8, 16, 32) and 50 <= params["sink_strategy.detector.tau"] <= 200
    assert all(1e-4 <= params[key] <= 1e-2 for key in ("model.optim.lr", "model.optim.projector_lr"))
    best = [job for job in jobs if metric(job) == results["best_value"]]
    tried = [yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) for job in best]
    assert any({f"{k}={v}" for k, v in params.items()} <= set(overrides) for overrides in tried)
    table = (out / "table.md").read_text().splitlines()
    assert table[0].startswith(
        "| job | model.lora.r | model.optim.lr | model.optim.projector_lr | sink_strategy.detector"
    )
    assert len(table) == 2 + 3 and table[2] in proc.stdout


def test_a_submitit_sweep_runs_each_job_in_its_own_directory(sweep, tmp_path):
    # hydra/launcher=slurm runs the same launcher code with SLURM's executor: one process (a SLURM job) per point
    proc = sweep(["-m", "hydra/launcher=submitit_local", "model.optim.lr=1e-3,2e-3"])
    out = tmp_path / "sweep"
    for number, lr in ((0, "0.001"), (1, "0.002")):
        job = out / str(number)
        assert f"model.optim.lr={lr}" in yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        assert 0 <= metric(job) <= 1 and (job / "predictions.jsonl").is_file() and (job / "train.log").is_file()
    assert len(list((out / ".submitit").glob("*/*_log.out"))) == 2  # each job's own process log
    lines = (out / "table.csv").read_text().splitlines()
    assert lines[0].startswith("job,model.optim.lr,all/global/accuracy") and len(lines) == 3
    assert "| 1 | 0.002 |" in proc.stdout


def test_the_slurm_launcher_submits_one_array_job_with_a_task_per_device(sweep, tmp_path):
    # No cluster here: an `sbatch` that keeps the script it is given and refuses it, so that the sweep stops there
    # (and an `srun`, which submitit looks for first).
    bin_dir, kept = tmp_path / "bin", tmp_path / "sbatch_script.sh"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {kept}\necho "sbatch: error: no cluster here" >&2\nexit 1\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    args = ["-m", "hydra/launcher=slurm", "model.optim.lr=1e-3,2e-3", "trainer.devices=2", "+trainer.num_nodes=3"]
    proc = sweep([*args, "hydra.launcher.partition=gpu"], check=False, path=bin_dir)
    assert proc.returncode != 0 and "no cluster here" in proc.stdout + proc.stderr
    script = kept.read_text()
    expected = [
        "--array=0-1%2",
        "--job-name=train",
        "--nodes=3",
        "--ntasks-per-node=2",
        "--partition=gpu",
        "--time=240",
    ]
    for line in expected:
        assert f"#SBATCH {line}\n" in script, line
    assert "--gpus-per-node" not in script  # a CPU trainer
    # every task started by srun (Lightning's SLURMEnvironment reads its variables), its log beside the job's
    logs = tmp_path / "sweep" / "slurm" / "%A_%a"
    assert f"srun --unbuffered --output {logs}/%A_%a_%t_log.out" in script
