"""Fixtures of the entry-point tests."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[2] / "conf"


@pytest.fixture()
def env(tmp_path, hermetic_env):
    """The environment an entry point runs in: offline, its data and cache under the test's temp dir."""
    return {**os.environ, **hermetic_env, "SINKFLOW_ROOT": str(tmp_path), "HYDRA_FULL_ERROR": "1"}


@pytest.fixture(scope="session")
def other_eval_sets():
    """`other_eval_sets(dataset, keep)`: the overrides that drop every evaluation set of conf/dataset/<dataset>.yaml
    but `keep` (so a benchmark added to the configs does not change what these tests evaluate)."""

    def overrides(dataset: str, keep: str) -> list[str]:
        sets = OmegaConf.load(CONF / "dataset" / f"{dataset}.yaml").eval_sets
        return [f"~dataset.eval_sets.{name}" for name in sets if name != keep]

    return overrides


@pytest.fixture
def entry_point(env):
    """`entry_point(script, args, cwd)`: run train.py / evaluate.py / ... in a fresh interpreter with `env`; fail
    with the end of its error output unless it succeeds."""

    def run(script: str, args: list[str], cwd, timeout: int = 900) -> subprocess.CompletedProcess:
        command = [sys.executable, str(CONF.parent / script), *args]
        proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, f"{script} failed:\n{proc.stderr[-5000:]}"
        return proc

    return run
