"""The multirun table: one row per job, labelled by the swept value; failed jobs stay visible."""

import json

from sinkflow.sweep_table import sweep_table


def job(root, number, overrides, metrics=None):
    directory = root / str(number)
    (directory / ".hydra").mkdir(parents=True)
    (directory / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if metrics is not None:
        (directory / "metrics.json").write_text(json.dumps(metrics))


def test_rows_follow_job_order_with_values_and_failures(tmp_path):
    job(
        tmp_path,
        0,
        ["ckpt_path=a.ckpt", "sink_strategy=none"],
        {"all/global/accuracy": 0.5, "all/local/accuracy": 0.25},
    )
    job(tmp_path, 1, ["ckpt_path=a.ckpt", "sink_strategy=drop_sinks"], {"all/global/accuracy": 0.125})
    job(tmp_path, 10, ["ckpt_path=a.ckpt", "sink_strategy=sinks_only"])
    (tmp_path / "multirun.yaml").write_text("not a job")
    table = sweep_table(tmp_path, ["all/global/accuracy", "all/local/accuracy"], ["sink_strategy"])
    assert table.splitlines() == [
        "| sink_strategy | all/global/accuracy | all/local/accuracy |",
        "|---|---|---|",
        "| none | 0.500 | 0.250 |",
        "| drop_sinks | 0.125 | — |",
        "| sinks_only | failed | failed |",
    ]


def test_several_swept_keys_are_named(tmp_path):
    job(tmp_path, 0, ["sink_strategy=sink_front", "seed=1"], {"m": 1.0})
    assert "| sink_strategy=sink_front, seed=1 | 1.000 |" in sweep_table(tmp_path, ["m"], ["sink_strategy", "seed"])
