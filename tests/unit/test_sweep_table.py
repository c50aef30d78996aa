"""The multirun table: one row per job, the overrides that tell jobs apart and the chosen metrics as columns, in
Markdown and CSV; failed and missing jobs stay visible; on for every multirun, and a CLI for a sweep afterwards."""

import csv
import json

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import RunMode
from omegaconf import OmegaConf

from sinkflow.config import CONF_DIR
from sinkflow.sweep_table import HEADLINE, SweepTable, main, write_tables


def job(root, number, overrides, metrics=None):
    directory = root / str(number)
    (directory / ".hydra").mkdir(parents=True)
    (directory / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if metrics is not None:
        (directory / "metrics.json").write_text(json.dumps(metrics))
    return directory


def test_rows_follow_job_order_with_values_failures_and_missing_jobs(tmp_path):
    scores = {"all/global/accuracy": 0.5, "all/local/accuracy": 0.25}
    job(tmp_path, 0, ["ckpt_path=a.ckpt", "sink_strategy=none"], scores)
    job(tmp_path, 1, ["ckpt_path=a.ckpt", "sink_strategy=drop_sinks"], {"all/global/accuracy": 0.125})
    (job(tmp_path, 2, ["ckpt_path=a.ckpt", "sink_strategy=sink_end"]) / "failed.txt").write_text("ValueError: x\n")
    job(tmp_path, 10, ["ckpt_path=a.ckpt", "sink_strategy=sinks_only"])
    (tmp_path / "multirun.yaml").write_text("not a job")
    (tmp_path / ".submitit").mkdir()  # the launcher's folder is not a job
    table = write_tables(tmp_path, ["all/global/accuracy", "all/local/accuracy"], ["sink_strategy"])
    # ckpt_path is the same in every job: not a column
    assert table.splitlines() == [
        "| job | sink_strategy | all/global/accuracy | all/local/accuracy |",
        "|---|---|---|---|",
        "| 0 | none | 0.500 | 0.250 |",
        "| 1 | drop_sinks | 0.125 | — |",
        "| 2 | sink_end | failed | failed |",
        "| 10 | sinks_only | missing | missing |",
    ]
    assert (tmp_path / "table.md").read_text() == table
    with open(tmp_path / "table.csv") as f:
        assert list(csv.reader(f))[:2] == [
            ["job", "sink_strategy", "all/global/accuracy", "all/local/accuracy"],
            ["0", "none", "0.5", "0.25"],
        ]


def test_every_varying_override_is_a_column_and_one_job_shows_all(tmp_path):
    job(tmp_path, 0, ["model.optim.lr=1e-3", "model.lora.r=8", "trainer=debug"], {"m": 1.0})
    job(tmp_path, 1, ["model.optim.lr=2e-3", "model.lora.r=8", "trainer=debug"], {"m": 0.5})
    # model.lora.r is named by the sweeper: a column although both jobs share its value
    header = write_tables(tmp_path, ["m"], ["model.lora.r"]).splitlines()[0]
    assert header == "| job | model.optim.lr | model.lora.r | m |"
    assert write_tables(tmp_path, ["m"]).splitlines()[2] == "| 0 | 1e-3 | 1.000 |"
    single = tmp_path / "single"
    job(single, 0, ["+global_local_arm=none", "trainer=debug"], {"m": 1.0})
    assert write_tables(single, ["m"]).splitlines()[0] == "| job | global_local_arm | trainer | m |"


def test_default_columns_are_the_optimized_metric_then_the_headline_scores(tmp_path):
    scores = {"open/background/accuracy": 0.9, "all/global/accuracy": 0.5, "pope/f1_mean": 0.6, "mme/perception": 800.0}
    job(tmp_path, 0, ["seed=0"], {**scores, "sinks/per_image": 2.0, "gqa/overall": 0.1, "pope/random/f1": 0.6})
    job(tmp_path, 1, ["seed=1"], scores)
    header = write_tables(tmp_path, first="open/background/accuracy").splitlines()[0]
    assert header == (
        "| job | seed | open/background/accuracy | all/global/accuracy | gqa/overall | mme/perception | pope/f1_mean |"
    )
    assert write_tables(tmp_path).splitlines()[3] == "| 1 | 1 | 0.500 | — | 800.000 | 0.600 |"  # no gqa in job 1


def test_the_callback_records_a_failed_job_and_keeps_the_table_current(tmp_path):
    first = job(tmp_path, 0, ["model.optim.lr=1"], {"all/global/accuracy": 0.5})
    second = job(tmp_path, 1, ["model.optim.lr=2"])

    def config(output_dir, mode=RunMode.MULTIRUN):
        return OmegaConf.create(
            {
                "optimized_metric": "all/global/accuracy",
                "hydra": {"mode": mode, "sweep": {"dir": str(tmp_path)}, "runtime": {"output_dir": str(output_dir)}},
            }
        )

    callback = SweepTable()
    callback.on_job_end(config(first), JobReturn(status=JobStatus.COMPLETED, _return_value=0.5))
    assert not (first / "failed.txt").exists()
    assert "| 1 | 2 | missing |" in (tmp_path / "table.md").read_text()
    failure = ValueError("`model.optim.lr` must be a number\nsecond line")
    callback.on_job_end(config(second), JobReturn(status=JobStatus.FAILED, _return_value=failure))
    assert (second / "failed.txt").read_text() == "ValueError: `model.optim.lr` must be a number\n"
    assert (tmp_path / "table.md").read_text().splitlines()[2:] == ["| 0 | 1 | 0.500 |", "| 1 | 2 | failed |"]

    single_run = tmp_path / "single"  # a plain run (not a multirun) writes no table
    single_run.mkdir()
    SweepTable().on_job_end(config(single_run, RunMode.RUN), JobReturn(status=JobStatus.FAILED, _return_value=failure))
    assert not (single_run / "failed.txt").exists()


def test_cli_tabulates_a_sweep_afterwards_with_its_optimized_metric(tmp_path, capsys):
    job(tmp_path, 0, ["seed=0"], {"all/global/accuracy": 0.5, "open/accuracy": 0.25})
    job(tmp_path, 1, ["seed=1"])  # killed: no metrics
    OmegaConf.save(
        {"optimized_metric": "open/accuracy", "hydra": {"sweeper": {"params": {"seed": "0,1"}}}},
        tmp_path / "multirun.yaml",
    )
    main([str(tmp_path)])
    assert capsys.readouterr().out.splitlines() == [
        "| job | seed | open/accuracy | all/global/accuracy |",
        "|---|---|---|---|",
        "| 0 | 0 | 0.250 | 0.500 |",
        "| 1 | 1 | missing | missing |",
    ]
    main([str(tmp_path), "--metrics", "all/global/accuracy"])
    assert capsys.readouterr().out.splitlines()[2] == "| 0 | 0 | 0.500 |"
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        main([str(tmp_path / "empty")])
    assert "no job directories" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("config_name", "overrides", "metrics"),
    [
        ("train", [], None),
        ("evaluate", [], None),
        ("evaluate", ["experiment=training_free_sweep"], ["open/global/accuracy", "open/local/accuracy"]),
        ("train", ["experiment=global_local_study"], ["open/global/accuracy", "open/local/accuracy"]),
    ],
)
def test_every_multirun_has_the_table_and_experiments_keep_their_columns(config_name, overrides, metrics):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    table = cfg.hydra.callbacks.sweep_table
    assert table._target_ == "sinkflow.sweep_table.SweepTable"
    assert (table.metrics[:2] if metrics else table.metrics) == metrics
    assert SweepTable(**{k: v for k, v in table.items() if k != "_target_"}).pattern == HEADLINE
