"""Shared fixtures: hermetic offline environment, one tiny checkpoint and one small shapes dataset per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def hermetic_env(tmp_path_factory):
    """No hub, no network W&B, nothing written outside the test's temp dirs."""
    tmp = tmp_path_factory.mktemp("env")
    env = {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_DIR": str(tmp / "wandb"),
        "WANDB_CACHE_DIR": str(tmp / "wandb-cache"),
        "WANDB_CONFIG_DIR": str(tmp / "wandb-config"),
        "WANDB_DATA_DIR": str(tmp / "wandb-data"),
        "SINKFLOW_CACHE": str(tmp / "cache"),
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def tiny_checkpoint(hermetic_env) -> str:
    """A tiny LLaVA saved with save_pretrained (HF format) in the session cache."""
    from sinkflow.models.tiny import ensure_tiny_llava

    return ensure_tiny_llava(hermetic_env["SINKFLOW_CACHE"])


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory) -> Path:
    """A small shapes dataset (64 training images, 12 evaluation images)."""
    from sinkflow.data.shapes import generate_shapes

    return generate_shapes(tmp_path_factory.mktemp("shapes"), seed=0, n_train=64, n_eval=12)


@pytest.fixture()
def image_path(shapes_root) -> str:
    return str(shapes_root / "eval_images" / "eval_00000.png")
