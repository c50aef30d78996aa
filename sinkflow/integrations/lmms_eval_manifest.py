"""The `lmms_eval.models` entry point (pyproject.toml): lmms-eval reads it while it builds its model registry, at
every start, so it names the adapter's class without importing it (that would load torch, Lightning and Hydra
before lmms-eval knows which model it runs)."""

from __future__ import annotations

from lmms_eval.models.registry_v2 import ModelManifest


def manifest() -> ModelManifest:
    """`--model sinkflow`: `sinkflow.integrations.lmms_eval.SinkflowLMM`, a simple (not chat) model."""
    return ModelManifest(model_id="sinkflow", simple_class_path="sinkflow.integrations.lmms_eval.SinkflowLMM")
