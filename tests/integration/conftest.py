"""Fixtures of the entry-point tests."""

import os

import pytest


@pytest.fixture()
def env(tmp_path, hermetic_env):
    """The environment an entry point runs in: offline, its data and cache under the test's temp dir."""
    return {**os.environ, **hermetic_env, "SINKFLOW_ROOT": str(tmp_path), "HYDRA_FULL_ERROR": "1"}
