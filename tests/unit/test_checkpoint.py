"""Checkpoints are read without running code, and anything that is not one is named in one line."""

import os
import re
from pathlib import Path

import pytest
import torch

from sinkflow.models.checkpoint import CheckpointError, read_checkpoint

ROOT = Path(__file__).resolve().parents[2]


class RunsCode:
    """A pickle whose loading calls os.system (what a crafted .ckpt does)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def malicious_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"sinkflow": RunsCode(marker), "state_dict": {}}, path)
    return path


def test_a_checkpoint_that_would_run_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "marker"
    path = malicious_checkpoint(tmp_path / "evil.ckpt", marker)
    with pytest.raises(CheckpointError) as error:
        read_checkpoint(path)
    message = str(error.value)
    assert message.startswith(f"{path}: refused: loading it would call ") and "system" in message
    assert "never runs code from a checkpoint" in message and "\n" not in message
    assert not marker.exists()


@pytest.mark.parametrize(
    "content,reason",
    [
        (b"hello, not a checkpoint\n", "not a readable checkpoint"),
        (b"", "not a readable checkpoint"),
        ("truncated", "not a readable checkpoint"),
        ("foreign", "not a sinkflow checkpoint (it holds ['model', 'optimizer'], no 'sinkflow' entry)"),
    ],
)
def test_a_file_that_is_not_a_sinkflow_checkpoint_gets_one_line(tmp_path, content, reason):
    path = tmp_path / "x.ckpt"
    if content == "truncated":
        torch.save({"sinkflow": {}, "state_dict": {"w": torch.zeros(1000)}}, path)
        path.write_bytes(path.read_bytes()[:2000])
    elif content == "foreign":
        torch.save({"model": {"w": torch.zeros(2)}, "optimizer": {}}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError) as error:
        read_checkpoint(path)
    message = str(error.value)
    assert message.startswith(f"{path}: {reason}") and "\n" not in message
    assert message.endswith(
        "expected a sinkflow checkpoint (a run's checkpoints/last.ckpt, written by train.py) or, "
        "for evaluate.py, its export directory (checkpoints/export/)"
    )


def test_a_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"^ckpt_path={re.escape(str(tmp_path))}/none.ckpt: no such file"):
        read_checkpoint(tmp_path / "none.ckpt")


def test_nothing_in_the_project_unpickles_with_weights_only_false():
    """Every torch.load in the package, entry points, bench scripts and tests says weights_only=True."""
    sources = [p for folder in ("sinkflow", "bench", "tests") for p in (ROOT / folder).rglob("*.py")]
    sources += list(ROOT.glob("*.py"))
    calls = [(p, m) for p in sources for m in re.finditer(r"torch\.load\(([^()]|\([^()]*\))*\)", p.read_text())]
    assert calls, "the scan must see the torch.load calls"
    unsafe = [f"{p.relative_to(ROOT)}: {m.group()}" for p, m in calls if "weights_only=True" not in m.group()]
    assert not unsafe, unsafe
    assert not [p for p in sources if "weights_only=False" in p.read_text() and p != Path(__file__)]
