"""The analysis registry: every task found by importing its module, in step with conf/analyze.yaml and the README,
and a new task module run through `run.analyze` without editing any list."""

import json
import re
import textwrap
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import sinkflow.config  # noqa: F401  (resolvers)
from sinkflow import run
from sinkflow.analysis import task
from sinkflow.analysis.task import ANALYSES
from sinkflow.registry import Registry

ROOT = Path(__file__).resolve().parents[2]
SMALL_DATA = ["model=tiny_llava", "dataset.prepare.n_train=32", "dataset.prepare.n_eval=6"]  # an LLM of 2 layers

KNOWN = {"calibrate", "propagation", "massive_dims", "relevance", "decode", "probe"}  # guards against an empty registry


def compose_analyze(overrides: list[str], tmp_path: Path):
    """conf/analyze.yaml as `analyze.py` composes it, its data and output under `tmp_path`."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(
            config_name="analyze",
            overrides=[f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path / 'out'}", *overrides],
        )


def test_every_registered_task_has_a_settings_section_and_every_section_a_task():
    raw = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "analyze.yaml"))
    sections = {key for key, value in raw.items() if isinstance(value, dict) and key != "hydra"}
    assert KNOWN <= set(ANALYSES)
    assert sections == set(ANALYSES), (
        "conf/analyze.yaml needs one section per registered task, and no other (besides its hydra node)"
    )
    assert raw["task"] in sections


def test_the_readme_table_of_analyses_names_every_registered_task():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Analyses\n", 1)[1].split("\n## ", 1)[0]
    rows = set(re.findall(r"^\| `(\w+)` \|", section, flags=re.MULTILINE))
    assert KNOWN <= rows and rows == set(ANALYSES)


TOY = """
import torch

from sinkflow.analysis.task import ANALYSES, Analysis


def preflight(settings, n_layers):
    if settings.layer >= n_layers:
        raise ValueError(f"toy.layer={settings.layer} is beyond the LLM's {n_layers} layers")


def run(ctx):
    images = [key for batch in ctx.batches() for key in batch["image_keys"]]
    summary = {"images": len(images), "layer": ctx.settings.layer, "gradients": torch.is_grad_enabled()}
    return ctx.write(summary, {})


ANALYSES.register("toy", Analysis(run, preflight=preflight))
"""


def test_a_new_task_module_runs_through_analyze_without_editing_any_list(tmp_path, monkeypatch, shared_image_sets):
    package = tmp_path / "toy_analyses"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "toy.py").write_text(textwrap.dedent(TOY))
    monkeypatch.syspath_prepend(str(tmp_path))
    # A registry over the toy package alone, where task modules register (sinkflow.analysis.task.ANALYSES) and
    # where analyze() looks: it finds the toy by importing the package, as ANALYSES finds the real tasks.
    registry = Registry("analysis task", "toy_analyses")
    monkeypatch.setattr(task, "ANALYSES", registry)
    monkeypatch.setattr(run, "ANALYSES", registry)
    with pytest.raises(ValueError, match=r"^toy.layer=2 is beyond the LLM's 2 layers$"):
        run.analyze(compose_analyze(["task=toy", "+toy.layer=2", *SMALL_DATA], tmp_path))
    assert not (tmp_path / "data").exists(), "the preflight runs before the model or the data load"
    summary = run.analyze(compose_analyze(["task=toy", "+toy.layer=1", *SMALL_DATA, *shared_image_sets], tmp_path))
    assert summary == {"images": 6, "layer": 1, "gradients": False}  # one question per image, no gradients
    assert json.loads((tmp_path / "out" / "toy.json").read_text()) == summary
    assert registry.names() == ["toy"]


def test_an_unknown_task_is_refused_with_the_registered_ones(tmp_path):
    with pytest.raises(ValueError) as caught:
        run.analyze(compose_analyze(["task=propagaton"], tmp_path))
    assert str(caught.value) == f"unknown analysis task 'propagaton'; available: {sorted(ANALYSES)}"
    assert KNOWN <= set(ANALYSES)
    assert not (tmp_path / "data").exists()
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["config_tree.log"]  # extras.print_config's, at start
