"""Loading: hub ids and local directories share one path; failures say what to do."""

import re
import shutil
from pathlib import Path

import pytest
import torch

from sinkflow.models.build import load_pretrained
from sinkflow.models.tiny import ensure_tiny_llava


def test_uncached_hub_id_fails_offline_with_a_hint():
    with pytest.raises(OSError, match=r"could not load model.checkpoint='llava-hf/llava-1.5-7b-hf'.*hf download"):
        load_pretrained("llava-hf/llava-1.5-7b-hf")


# Absolute, relative, home-relative, more than one separator, a trailing separator: none is a hub id.
@pytest.mark.parametrize(
    "source",
    [
        "/a/local/path/that/does/not/exist",
        "./missing",
        "../missing",
        "~/missing-sinkflow",
        "models/llava/missing",
        "missing/",
    ],
)
def test_a_missing_local_path_is_not_taken_for_a_hub_id(source, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"^{re.escape(f'model.checkpoint={source}: no such directory')}$"):
        load_pretrained(source)


def test_a_local_directory_must_be_a_hugging_face_model_directory(tmp_path):
    with pytest.raises(
        FileNotFoundError,
        match=re.escape(
            f"model.checkpoint={tmp_path}: the directory has no config.json (expected a Hugging Face model directory"
        ),
    ):
        load_pretrained(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(
        NotADirectoryError, match=re.escape(f"model.checkpoint={tmp_path / 'weights.bin'}: not a directory")
    ):
        load_pretrained(str(tmp_path / "weights.bin"))


def test_a_broken_local_directory_is_named_without_a_download_hint(tiny_checkpoint, tmp_path):
    shutil.copy(Path(tiny_checkpoint) / "config.json", tmp_path)
    with pytest.raises(OSError, match=re.escape(f"could not load model.checkpoint={tmp_path}: ")) as caught:
        load_pretrained(tmp_path)
    assert "hf download" not in str(caught.value)


def test_a_home_relative_directory_loads(tiny_checkpoint, monkeypatch):
    monkeypatch.setenv("HOME", str(Path(tiny_checkpoint).parent))
    model, _ = load_pretrained(f"~/{Path(tiny_checkpoint).name}")
    assert model.config.name_or_path == tiny_checkpoint


def test_bad_dtype_names_the_key(tiny_checkpoint):
    with pytest.raises(ValueError, match=r"`model.dtype` must be one of .*'float64'"):
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
