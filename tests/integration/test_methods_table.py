"""`evaluate.py experiment=methods_table`: one multirun, one table of every method's accuracy and cost."""

import csv

import pytest
from omegaconf import OmegaConf

pytestmark = pytest.mark.slow  # evaluate.py in a subprocess


def test_the_methods_table_shows_accuracy_and_what_each_method_keeps(tmp_path, entry_point, other_eval_sets):
    args = [
        "experiment=methods_table",
        "method=none,visionzip_64,fastv_75",
        "dataset.prepare.n_train=8",
        "dataset.prepare.n_eval=6",
        *other_eval_sets("shapes", "open"),
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    entry_point("evaluate.py", args, tmp_path)
    with open(tmp_path / "sweep" / "table.csv") as table:
        rows = {row["method"]: row for row in csv.DictReader(table)}
    assert set(rows) == {"none", "visionzip_64", "fastv_75"}
    tokens = {name: float(row["efficiency/visual_tokens"]) for name, row in rows.items()}
    cache = {name: float(row["efficiency/kv_cache_mb"]) for name, row in rows.items()}
    assert tokens["none"] == 64  # the tiny base's 64 tokens per image, one image per open question
    assert tokens["visionzip_64"] == round(64 * 0.1111)  # VisionZip's 64 of 576, as a fraction
    assert tokens["fastv_75"] == 16  # a quarter kept after layer K
    assert cache["visionzip_64"] < cache["fastv_75"] < cache["none"]  # FastV keeps every token before K
    assert all(
        0 <= float(row["open/accuracy"]) <= 1 and float(row["efficiency/prefill_ms"]) > 0 for row in rows.values()
    )


def test_the_lsg_row_evaluates_the_trained_lsg_run(tmp_path, entry_point, other_eval_sets):
    """LSG trains first (experiment=lsg: the gates alone, on the frozen base), and its methods_table row is that run:
    its gates come with the export, its frozen base is the table's model."""
    data = ["dataset.prepare.n_train=8", "dataset.prepare.n_eval=6", *other_eval_sets("shapes", "open")]
    trained = tmp_path / "lsg"
    training = ["experiment=lsg", "trainer.max_steps=2", "dataset.batch_size=4", f"hydra.run.dir={trained}"]
    entry_point("train.py", [*training, *data], tmp_path)
    export = trained / "checkpoints" / "export"
    assert (export / "intervention.safetensors").exists()
    sweep = [
        "experiment=methods_table",
        "method=none,lsg",
        f"lsg_run={export}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    entry_point("evaluate.py", [*sweep, *data], tmp_path)
    with open(tmp_path / "sweep" / "table.csv") as table:
        rows = {row["method"]: row for row in csv.DictReader(table)}
    assert set(rows) == {"none", "lsg"}
    assert float(rows["lsg"]["efficiency/visual_tokens"]) == float(rows["none"]["efficiency/visual_tokens"]) == 64
    evaluated = OmegaConf.load(tmp_path / "sweep" / "1" / ".hydra" / "config.yaml")
    assert evaluated.ckpt_path == str(export)  # the run, whose gates must load (an export without them is an error)
