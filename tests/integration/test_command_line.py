"""The command line answers fast: `--help`, a mistyped override and the scoring CLI import no torch, transformers or
Lightning (those load only once a run starts), and the scoring CLI reports bad input in one line."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # spawns interpreters

ROOT = Path(__file__).resolve().parents[2]
HEAVY = {"torch", "transformers", "lightning", "torchmetrics"}


def imported_top_level(args: list[str], env: dict, cwd: Path) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run `python -X importtime ARGS`; return the process and the top-level packages it imported."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    modules = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in proc.stderr.splitlines()
        if line.startswith("import time:")
    }
    return proc, modules


@pytest.mark.parametrize(
    "args",
    [
        ["train.py", "--help"],
        ["evaluate.py", "--help"],
        ["analyze.py", "--help"],
        ["-m", "sinkflow.eval.score", "--help"],
    ],
    ids=["train", "evaluate", "analyze", "score"],
)
def test_help_loads_no_heavy_package(args, env, tmp_path):
    proc, modules = imported_top_level(
        [str(ROOT / args[0]) if args[0].endswith(".py") else args[0], *args[1:]], env, tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "hydra" in modules or "argparse" in modules  # importtime saw the imports
    assert not modules & HEAVY, f"--help imported {sorted(modules & HEAVY)}"


def test_a_mistyped_override_is_reported_before_any_heavy_import(env, tmp_path):
    proc, modules = imported_top_level([str(ROOT / "train.py"), "trainer.max_epocs=3"], env, tmp_path)
    assert proc.returncode == 1 and "max_epocs" in proc.stderr
    assert not modules & HEAVY, f"a config error imported {sorted(modules & HEAVY)}"


def test_the_scoring_cli_reports_bad_input_in_one_line(env, tmp_path):
    path = tmp_path / "predictions.jsonl"
    path.write_text('{"benchmark": "pope", "id": "1"}\n')
    proc = subprocess.run(
        [sys.executable, "-m", "sinkflow.eval.score", str(path)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: {path}:1: question, answer, prediction, prompt: missing field(s) of a prediction record"
    ]
