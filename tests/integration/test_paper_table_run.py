"""experiment=paper_table end to end on the tiny model and the shapes formats: a Dual-MLP run trained first, then
the multirun, whose rows run or are skipped, ending in one table with the paper's columns."""

import json

import pytest

from sinkflow.paper_table import NAMES
from test_entry_points import SMALL_DATA, run

pytestmark = pytest.mark.slow


def test_paper_table_runs_the_rows_it_can_and_prints_one_table(tmp_path, env):
    dual = tmp_path / "dual"  # the default training: DIYSink's Dual-MLP with LoRA
    run("train.py", ["trainer.max_steps=2", "logger=none", *SMALL_DATA, f"hydra.run.dir={dual}"], tmp_path, env)
    sweep = tmp_path / "sweep"
    proc = run(
        "evaluate.py",
        [
            "experiment=paper_table",
            "model=tiny_llava",
            "dataset=shapes",
            *SMALL_DATA,
            "dataset.limit_eval=3",
            f"paper_table.runs.dual_mlp={dual}",
            f"hydra.sweep.dir={sweep}",
        ],
        tmp_path,
        env,
    )
    output = proc.stdout + proc.stderr
    assert "Launching 4 jobs locally" in output
    assert "paper_table: row reweight skipped: no trained run (paper_table.runs.reweight=<run dir>)" in output
    lines = (sweep / "paper_table.md").read_text().splitlines()
    assert lines[0].startswith("**CPU SMOKE RUN, tiny_llava on shapes: its numbers mean nothing next to the paper's")
    assert lines[2] == "| strategy | | " + " | ".join(NAMES) + " |"
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")[2:] for line in lines[4::3]}
    assert list(rows) == ["none", "sink_front", "dual_mlp", "reweight", "cot_route"]
    assert rows["reweight"] == ["skipped"] * (len(NAMES) - 1) + ["skipped |"]
    column = NAMES.index("MMStar")
    for strategy in ("none", "sink_front", "dual_mlp", "cot_route"):  # each ran and scored MMStar (shapes has it)
        assert 0 <= float(rows[strategy][column]) <= 100
    assert lines[5] == "|  | paper |  |  |  |  | 56.55 | 1781.70 |  | 26.00 | 33.27 | 57.29 |"  # LLaVA-1.5-7B
    table = json.loads((sweep / "paper_table.json").read_text())
    assert table["published_model"] == "llava15_7b" and table["columns"] == list(NAMES)
    for header in ("strategy", *NAMES):
        assert header in proc.stdout  # printed with rich
    for job in sweep.glob("[0-9]*"):
        metrics = json.loads((job / "metrics.json").read_text())
        assert metrics["throughput/questions_per_second"] > 0 and metrics["throughput/seconds"] > 0
