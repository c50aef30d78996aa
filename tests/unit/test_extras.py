"""`extras`: the resolved config tree printed and saved, tags enforced without a prompt, warnings silenced."""

from __future__ import annotations

import warnings

import pytest

from sinkflow.config import compose_config
from sinkflow.extras import apply_extras


def config(tmp_path, *overrides: str, name: str = "train"):
    return compose_config([f"paths.output_dir={tmp_path}", *overrides], config_name=name)


@pytest.mark.parametrize("name", ["train", "evaluate", "analyze"])
def test_every_entry_point_prints_its_resolved_config_tree_and_saves_it(tmp_path, capsys, name):
    apply_extras(config(tmp_path, "model.optim.lr=0.05", name=name))
    saved = (tmp_path / "config_tree.log").read_text()
    assert saved.startswith("config\n") and "├── model" in saved and f"task_name\n│   └── {name}" in saved
    assert "lr: 0.05" in saved  # the overridden value
    assert f"output_dir: {tmp_path}" in saved and "${" not in saved  # resolved
    assert "lr: 0.05" in capsys.readouterr().out


def test_print_config_false_prints_nothing(tmp_path, capsys):
    apply_extras(config(tmp_path, "extras.print_config=false"))
    assert not (tmp_path / "config_tree.log").exists() and capsys.readouterr().out == ""


def test_enforce_tags_stops_a_run_without_tags_and_lets_a_tagged_one_run(tmp_path):
    with pytest.raises(ValueError, match=r"extras.enforce_tags=true: this run has no tags; .* tags=\[baseline,lr_"):
        apply_extras(config(tmp_path, "extras.enforce_tags=true", "extras.print_config=false"))
    apply_extras(config(tmp_path, "extras.enforce_tags=true", "extras.print_config=false", "tags=[baseline]"))


def test_ignore_warnings_silences_python_warnings(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        apply_extras(config(tmp_path, "extras.ignore_warnings=true", "extras.print_config=false"))
        warnings.warn("not shown", UserWarning, stacklevel=1)
    assert caught == []
