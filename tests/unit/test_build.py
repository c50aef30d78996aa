"""Loading: hub ids and local directories share one path; failures say what to do."""

import pytest
import torch

from sinkflow.models.build import load_pretrained
from sinkflow.models.tiny import ensure_tiny_llava


def test_uncached_hub_id_fails_offline_with_a_hint():
    with pytest.raises(OSError, match=r"could not load model.checkpoint='llava-hf/llava-1.5-7b-hf'.*hf download"):
        load_pretrained("llava-hf/llava-1.5-7b-hf")


def test_bad_dtype_names_the_key(tiny_checkpoint):
    with pytest.raises(ValueError, match=r"model.dtype must be one of .*'float64'"):
        load_pretrained(tiny_checkpoint, dtype="float64")


def test_dtype_is_applied(tiny_checkpoint):
    model, _ = load_pretrained(tiny_checkpoint, dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_tiny_checkpoint_is_built_once_per_spec(tmp_path):
    first = ensure_tiny_llava(tmp_path)
    stamp = (tmp_path / first.split("/")[-1] / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_llava(tmp_path) == first
    assert (tmp_path / first.split("/")[-1] / "model.safetensors").stat().st_mtime_ns == stamp
    assert ensure_tiny_llava(tmp_path, text_layers=3) != first
