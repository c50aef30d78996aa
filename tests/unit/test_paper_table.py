"""experiment=paper_table: the published numbers, the table's cells, the multirun it composes; and the evaluation
order (longest prompt first) that the test loader uses."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from omegaconf.errors import InterpolationResolutionError
from torch.utils.data import DistributedSampler

import sinkflow.config  # noqa: F401  (resolvers)
from sinkflow.data.datamodule import by_prompt_length
from sinkflow.data.errors import DataFormatError
from sinkflow.paper_table import (
    AVERAGED,
    NAMES,
    Row,
    load_published,
    ours,
    paper_table,
    read_rows,
    rows_to_run,
    to_markdown,
)

CONF = Path(__file__).resolve().parents[2] / "conf"
STRATEGIES = ["none", "sink_front", "dual_mlp", "reweight", "cot_route"]


def test_the_published_numbers_are_the_papers():
    published = load_published()
    seven, half = published["llava15_7b"]["rows"], published["tinyllava_siglip_qwen2_05b"]["rows"]
    assert {k: v[0] for k, v in seven["none"].items()} == {
        "AVG": 56.55,
        "MME": 1781.70,
        "MathVista": 26.00,
        "MMStar": 33.27,
        "CVBench": 57.29,
    }
    assert (seven["cot_route"]["MME"][0], seven["reweight"]["MathVista"][0]) == (1797.80, 26.60)
    assert (seven["sink_front"]["MMStar"][0], seven["cot_route"]["CVBench"][0]) == (33.14, 57.70)  # LSG: 33.27-0.13
    assert "dual_mlp" not in seven  # the paper gives no LLaVA-1.5-7B Dual-MLP-only numbers
    # The paper's LLaVA-eval AVG of the 0.5B baseline is the mean of its four published columns.
    assert sum(half["none"][name][0] for name in AVERAGED) / 4 == pytest.approx(half["none"]["AVG"][0], abs=0.005)
    assert half["dual_mlp"]["SQA-IMG"] == (60.63, 'DIYSink, Dual-MLP ablation, row "+ Dual-MLP" of TinyLLaVA-0.5B')


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ("{GQA: 1, Gqa: 2}", "m.rows.none: Gqa: expected one of"),
        ("{GQA: '1'}", "m.rows.none: GQA: expected a number, got '1'"),
    ],
)
def test_a_bad_published_entry_is_named(tmp_path, values, error):
    path = tmp_path / "published.yaml"
    path.write_text(f"m:\n  title: M\n  rows:\n    none:\n      - source: s\n        values: {values}\n")
    with pytest.raises(DataFormatError, match=f"^{path}:{error}"):
        load_published(path)


def test_a_column_given_twice_in_a_row_is_refused(tmp_path):
    path = tmp_path / "published.yaml"
    row = "      - source: {}\n        values: {{MME: 1}}\n"
    path.write_text("m:\n  title: M\n  rows:\n    none:\n" + row.format("a") + row.format("b"))
    with pytest.raises(DataFormatError, match="m.rows.none: MME: given twice \\('a'\\)"):
        load_published(path)


def test_our_columns_are_in_the_papers_units_and_the_avg_is_their_mean():
    metrics = {
        "gqa/overall": 0.6,
        "scienceqa_img/overall": 0.7,
        "textvqa/overall": 0.5,
        "mmmu/overall": 0.3,
        "mme/perception": 1500.0,
        "mme/cognition": 300.5,
        "mmstar/overall": 0.25,
    }
    values = ours(metrics)
    assert values == pytest.approx(
        {
            "GQA": 60,
            "SQA-IMG": 70,
            "TextVQA": 50,
            "MMMU": 30,
            "AVG": 52.5,
            "MME": 1800.5,
            "MME-Cog": 300.5,
            "MMStar": 25,
        }
    )
    assert "AVG" not in ours({k: v for k, v in metrics.items() if k != "mmmu/overall"})  # three of four: no AVG


def test_each_number_goes_to_its_row_and_column_with_the_difference():
    rows = [
        Row("none", "ran", ours({"mme/perception": 1500.0, "mme/cognition": 300.0, "mmstar/overall": 0.3})),
        Row("sink_front", "failed", {}),
        Row("reweight", "skipped", {}),
    ]
    table = paper_table(rows, load_published(), "llava15_7b", "benchmarks")
    assert table["title"].startswith("llava15_7b on benchmarks beside the paper's LLaVA-1.5-7B")
    none = table["rows"][0]["cells"]
    assert none["MME"] == pytest.approx(
        {"ours": 1800.0, "paper": 1781.70, "diff": 18.30, "source": none["MME"]["source"]}
    )
    assert none["MMStar"]["diff"] == pytest.approx(30.0 - 33.27)
    assert none["GQA"] == {"ours": None, "paper": None, "diff": None, "source": None}
    markdown = to_markdown(table).splitlines()
    assert markdown[2] == "| strategy | | " + " | ".join(NAMES) + " |"
    assert markdown[4:7] == [
        "| none | ours | — | — | — | — | — | 1800.00 | 300.00 | — | 30.00 | — |",
        "|  | paper |  |  |  |  | 56.55 | 1781.70 |  | 26.00 | 33.27 | 57.29 |",
        "|  | diff |  |  |  |  |  | +18.30 |  |  | -3.27 |  |",
    ]
    assert markdown[7].startswith("| sink_front | ours | failed | failed |")
    assert markdown[10] == "| reweight | ours |" + " skipped |" * len(NAMES)
    assert markdown[11] == "|  | paper |  |  |  |  | 56.59 | 1787.00 |  | 26.60 |  |  |"


def test_a_model_the_paper_does_not_report_is_a_smoke_run_beside_llava_7b():
    table = paper_table([Row("none", "ran", {})], load_published(), "tiny_llava", "shapes")
    assert table["title"].startswith("CPU SMOKE RUN, tiny_llava on shapes: its numbers mean nothing")
    assert table["published_model"] == "llava15_7b"
    chosen = paper_table([], load_published(), "tiny_llava", "shapes", "tinyllava_siglip_qwen2_05b")
    assert chosen["published_model"] == "tinyllava_siglip_qwen2_05b"
    with pytest.raises(ValueError, match="`paper_table.published_model` must be one of"):
        paper_table([], load_published(), "tiny_llava", "shapes", "llava_13b")


def test_rows_come_from_the_jobs_in_the_papers_order(tmp_path):
    def job(number, row, metrics=None):
        hydra = tmp_path / str(number) / ".hydra"
        hydra.mkdir(parents=True)
        (hydra / "overrides.yaml").write_text(f"- +paper_row={row}\n- dataset.limit_eval=2\n")
        choices = {"hydra": {"runtime": {"choices": {"model": "tiny_llava", "dataset": "shapes"}}}}
        (hydra / "hydra.yaml").write_text(json.dumps(choices))
        if metrics is not None:
            (tmp_path / str(number) / "metrics.json").write_text(json.dumps(metrics))

    job(0, "none", {"mmstar/overall": 0.5})
    job(1, "cot_route")
    rows, choices = read_rows(tmp_path, STRATEGIES)
    assert [(r.strategy, r.status) for r in rows] == [
        ("none", "ran"),
        ("sink_front", "skipped"),
        ("dual_mlp", "skipped"),
        ("reweight", "skipped"),
        ("cot_route", "failed"),
    ]
    assert rows[0].values == {"MMStar": 50.0} and choices == {"model": "tiny_llava", "dataset": "shapes"}


def hydra_config(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="evaluate", overrides=overrides, return_hydra_config=True)


def test_the_experiment_sweeps_the_rows_that_have_what_they_need(tmp_path):
    cfg = hydra_config(["experiment=paper_table"])
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    assert cfg.hydra.sweeper.params["+paper_row"] == "none,sink_front"
    assert (cfg.hydra.runtime.choices.model, cfg.hydra.runtime.choices.dataset) == ("llava15_7b", "benchmarks")
    assert cfg.dataset.eval_sets.pope is None and list(cfg.paper_table.strategies) == STRATEGIES
    given = hydra_config(["experiment=paper_table", f"paper_table.runs.dual_mlp={tmp_path}"])
    assert given.hydra.sweeper.params["+paper_row"] == "none,sink_front,dual_mlp,cot_route"  # cot_route routes it
    # A run that does not exist stops the sweep before its first job.
    missing = hydra_config(["experiment=paper_table", f"paper_table.runs.reweight={tmp_path / 'nope'}"])
    with pytest.raises(
        InterpolationResolutionError, match=f"paper_table.runs.reweight={tmp_path / 'nope'}: no such file or directory"
    ):
        missing.hydra.sweeper.params["+paper_row"]
    assert rows_to_run(STRATEGIES, {"dual_mlp": None, "reweight": "r", "cot_route": None}) == [
        "none",
        "sink_front",
        "reweight",
    ]


@pytest.mark.parametrize(
    ("row", "strategy", "ckpt", "own"),
    [
        ("none", "NoneStrategy", "/runs/base", False),
        ("sink_front", "SinkFront", "/runs/base", False),
        ("dual_mlp", "DualMLP", "/runs/d", True),
        ("reweight", "Reweight", "/runs/r", True),
        ("cot_route", "CotRoute", "/runs/d", False),
    ],
)
def test_each_row_evaluates_its_strategy_on_its_run(row, strategy, ckpt, own):
    runs = ["paper_table.base=/runs/base", "paper_table.runs.dual_mlp=/runs/d", "paper_table.runs.reweight=/runs/r"]
    cfg = hydra_config(["experiment=paper_table", "model=tiny_llava", "dataset=shapes", f"+paper_row={row}", *runs])
    assert cfg.sink_strategy.strategy._target_.endswith(f".{strategy}")
    assert (cfg.ckpt_path, cfg.use_checkpoint_strategy) == (ckpt, own)
    assert OmegaConf.select(cfg, "dataset.eval_sets.open") is None


def test_the_evaluation_order_is_longest_prompt_first_and_keeps_every_question_once():
    rng = random.Random(0)
    samples = [
        {
            "id": i,
            "image": [f"{i}a.png", f"{i}b.png"] if i % 7 == 0 else f"{i}.png",
            "conversations": [{"from": "human", "value": "q" * rng.randint(1, 40)}],
        }
        for i in range(50)
    ]
    ordered = by_prompt_length(samples)
    assert sorted(s["id"] for s in ordered) == list(range(50))
    assert by_prompt_length(samples) == ordered  # deterministic
    keys = [(isinstance(s["image"], list), len(s["conversations"][0]["value"])) for s in ordered]
    assert keys == sorted(keys, reverse=True)  # two-image questions first, then by text length
    ties = [s["id"] for s in ordered if not isinstance(s["image"], list)]
    lengths = {s["id"]: len(s["conversations"][0]["value"]) for s in samples}
    assert all(a < b for a, b in zip(ties, ties[1:]) if lengths[a] == lengths[b])
    # Under DDP, Lightning's DistributedSampler shards the ordered list: every question is answered on some rank.
    for world in (2, 3):
        answered = [
            ordered[i]["id"]
            for rank in range(world)
            for i in DistributedSampler(ordered, num_replicas=world, rank=rank, shuffle=False)
        ]
        assert set(answered) == set(range(50)) and len(answered) == -(-50 // world) * world
