"""sinkflow as an lmms-eval model (sinkflow/integrations/lmms_eval.py): lmms-eval's POPE requests answered exactly as
evaluate.py answers the same questions, its registration, and how its POPE numbers relate to sinkflow's scorer."""

from __future__ import annotations

import logging
import re
from importlib import import_module
from pathlib import Path

import pytest
import torch
from lmms_eval.api.instance import Instance
from lmms_eval.models.registry_v2 import ModelRegistryV2
from lmms_eval.tasks.pope import utils as pope_task
from lmms_eval.utils import load_yaml_config
from omegaconf import OmegaConf
from PIL import Image

from sinkflow.benchmarks.pope import load_pope
from sinkflow.config import compose_config
from sinkflow.data.predictions import read_predictions
from sinkflow.eval.metrics import score_records
from sinkflow.integrations.lmms_eval import SinkflowLMM, cut_at_stops, hydra_overrides
from sinkflow.models.export import export_trainable
from sinkflow.module import SinkflowModule
from sinkflow.run import evaluate

ROOT = Path(__file__).resolve().parents[2]
# lmms-eval's own POPE task: its prompt kwargs and generation settings (a task without `until` gets "\n\n").
POPE_TASK = load_yaml_config(yaml_path=str(Path(pope_task.__file__).with_name("pope.yaml")), mode="simple")
POPE_GENERATION = {**POPE_TASK["generation_kwargs"], "until": ["\n\n"]}
N_POPE = 8  # questions asked (dataset.limit_eval)
# evaluate.py asks POPE alone: every other shapes evaluation set configured away.
OTHER_SETS = [
    f"~dataset.eval_sets.{name}"
    for name in OmegaConf.load(ROOT / "conf/dataset/shapes.yaml").eval_sets
    if name != "pope"
]


def model_args(strategy: str, tmp: Path) -> dict:
    """`--model_args` as lmms-eval parses them: the tiny model routed by `strategy`, its data generated under `tmp`."""
    return {
        "model": "tiny_llava",
        "sink_strategy": strategy,
        "paths.data_dir": str(tmp / "data"),
        "dataset.prepare.n_train": 8,
        "dataset.prepare.n_eval": 6,
    }


def pope_doc(item: dict) -> dict:
    """A POPE question as an lmms-eval document (lmms-lab/POPE's columns, the image as a file)."""
    return {k: item[k] for k in ("question_id", "question", "answer", "category", "image_path")}


def doc_to_visual(doc: dict) -> list[Image.Image]:
    return [Image.open(doc["image_path"]).convert("RGB")]


def pope_requests(docs: list[dict]) -> list[Instance]:
    """lmms-eval's generate_until requests of the POPE task over `docs` (task "pope", split "test")."""
    prompt_kwargs = POPE_TASK["lmms_eval_specific_kwargs"]["default"]
    return [
        Instance(
            "generate_until",
            (pope_task.pope_doc_to_text(doc, prompt_kwargs), dict(POPE_GENERATION), doc_to_visual, i, "pope", "test"),
            i,
            {"task": "pope", "doc_id": i, "repeats": 1},
        )
        for i, doc in enumerate(docs)
    ]


def trained_export(args: dict, tmp: Path) -> Path:
    """An export of the tiny model trained with `none` (LoRA and projector weights drawn at random, so that they change
    the answers), as `evaluate.py ckpt_path=` and `--model_args ckpt_path=` take it."""
    cfg = compose_config([*hydra_overrides(args), "sink_strategy=none"], config_name="evaluate")
    module = SinkflowModule.from_config(cfg.model, cfg.sink_strategy, train=True)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.normal_(0, 0.2)
    return export_trainable(module, tmp / "export")


@pytest.mark.slow  # evaluate.py's run (in this process) on each
@pytest.mark.parametrize("strategy,trained", [("none", False), ("sink_front", False), ("sink_front", True)])
def test_the_adapter_answers_lmms_eval_requests_as_evaluate_py(strategy, trained, tmp_path):
    args = model_args(strategy, tmp_path)
    if trained:
        args["ckpt_path"] = str(trained_export(args, tmp_path))
    # evaluate.py on the shapes POPE questions, each answered within lmms-eval's POPE limit (128 new tokens).
    overrides = [
        *hydra_overrides(args),
        *OTHER_SETS,
        f"dataset.limit_eval={N_POPE}",
        f"+dataset.max_new_tokens.pope={POPE_GENERATION['max_new_tokens']}",
        f"paths.output_dir={tmp_path / 'run'}",
    ]
    cfg = compose_config(overrides, config_name="evaluate")
    evaluate(cfg)
    evaluated = {
        r["id"]: r for r in read_predictions(tmp_path / "run" / "predictions.jsonl") if r["benchmark"] == "pope"
    }
    root = Path(cfg.dataset.prepare.root)
    items = load_pope(root / "pope", root / "eval_images")[:N_POPE]  # what dataset.limit_eval asked
    assert set(evaluated) == {item["id"] for item in items}

    lm = SinkflowLMM(batch_size=3, device="cpu", **args)  # batches of 3, ragged last, in another order
    docs = [pope_doc(item) for item in items]
    lm.task_dict = {"pope": {"test": docs}}
    requests = pope_requests(docs)
    answers = lm.generate_until(requests)

    prompts = [lm.collator([lm.sample(request)[0]])["meta"][0]["prompt"] for request in requests]
    assert prompts == [evaluated[item["id"]]["prompt"] for item in items]
    assert answers == [cut_at_stops(evaluated[item["id"]]["prediction"], ["\n\n"]) for item in items]
    assert any(answers)  # the tiny model says something (random words), so equal answers are not equally empty
    if trained:  # the run's weights answered, not the pretrained model's
        pretrained = SinkflowLMM(batch_size=3, device="cpu", **model_args(strategy, tmp_path))
        pretrained.task_dict = lm.task_dict
        assert pretrained.generate_until(requests) != answers


def test_stop_strings_cut_the_answer_before_the_first_of_them():
    assert cut_at_stops("yes\n\nno. It is", ["\n\n"]) == "yes"
    assert cut_at_stops("a red. circle\n\nb", ["\n\n", "."]) == "a red"
    assert cut_at_stops("yes", []) == "yes"


def test_model_args_become_hydra_overrides_as_written():
    parsed = {"ckpt_path": "/runs/a/checkpoints/last.ckpt", "use_checkpoint_strategy": True, "x.tau": 80}
    assert hydra_overrides(parsed) == [
        "ckpt_path=/runs/a/checkpoints/last.ckpt",
        "use_checkpoint_strategy=true",
        "x.tau=80",
    ]
    # A strategy named beside a trained run routes it, unless use_checkpoint_strategy says otherwise.
    assert hydra_overrides({"ckpt_path": "/r", "sink_strategy": "sink_front"}) == [
        "ckpt_path=/r",
        "sink_strategy=sink_front",
        "use_checkpoint_strategy=false",
    ]
    assert hydra_overrides({**parsed, "sink_strategy": "sink_end"})[1] == "use_checkpoint_strategy=true"


def test_the_entry_point_names_the_adapter_for_lmms_eval_s_registry():
    """pyproject.toml's entry point (what `pip install -e .` registers) gives lmms-eval `--model sinkflow`."""
    section = (ROOT / "pyproject.toml").read_text().split('[project.entry-points."lmms_eval.models"]')[1]
    module, name = re.search(r'^sinkflow = "([\w.]+):(\w+)"$', section, re.MULTILINE).groups()
    registry = ModelRegistryV2()
    registry.register_manifest(getattr(import_module(module), name)())
    assert registry.get_model_class("sinkflow") is SinkflowLMM


@pytest.fixture(scope="module")
def adapter() -> SinkflowLMM:
    return SinkflowLMM(device="cpu", model="tiny_llava")


def test_requests_it_cannot_answer_say_why(adapter):
    with pytest.raises(NotImplementedError, match=r"loglikelihood \(output_type loglikelihood or multiple_choice: "):
        adapter.loglikelihood([])
    with pytest.raises(NotImplementedError, match="multi-round tasks are not supported"):
        adapter.generate_until_multi_round([])
    adapter.task_dict = {"video_task": {"test": [{"video": "clip.mp4"}]}}
    request = Instance(
        "generate_until",
        ("What happens?", {}, lambda doc: [doc["video"]], 0, "video_task", "test"),
        0,
        {"task": "video_task", "doc_id": 0, "repeats": 1},
    )
    with pytest.raises(NotImplementedError, match=r"task 'video_task' \(doc 0\) gives a str visual: .* images only"):
        adapter.generate_until([request])
    with pytest.raises(ValueError, match="--batch_size must be a positive integer for --model sinkflow, got 'auto'"):
        SinkflowLMM(batch_size="auto", model="tiny_llava")


def test_sampling_settings_are_refused_with_a_warning_once_per_task(adapter, caplog):
    with caplog.at_level(logging.WARNING, logger="sinkflow.integrations.lmms_eval"):
        adapter.check_greedy("t", {"temperature": 0.2, "do_sample": True, "num_beams": 1})
        adapter.check_greedy("t", {"temperature": 0.7})
    assert [r.getMessage() for r in caplog.records] == [
        "task t asks for do_sample=True: sinkflow decodes greedily (one beam, no sampling), as evaluate.py does",
        "task t asks for temperature=0.2: sinkflow decodes greedily (one beam, no sampling), as evaluate.py does",
    ]


def test_lmms_eval_pope_numbers_are_sinkflow_s_under_its_lmms_eval_parser_but_the_yes_ratio():
    """lmms-eval's POPE metrics over some answers equal sinkflow's `parser=lmms_eval` ones, except its yes-ratio, which
    is the share of yes among the ground truths (sinkflow's: among the predictions)."""
    answers = ["yes", "yes", "no", "no", "yes", "no", "yes"]
    predictions = ["yes", " Yes ", "no", "yes", "yes.", "maybe", "no"]
    docs = [{"question_id": i, "answer": a} for i, a in enumerate(answers)]
    logged = [pope_task.pope_process_results(doc, [p]) for doc, p in zip(docs, predictions)]
    lmms = {
        metric: aggregate([entry[f"pope_{metric}"] for entry in logged])
        for metric, aggregate in {
            "accuracy": pope_task.pope_aggregate_accuracy,
            "precision": pope_task.pope_aggregate_precision,
            "recall": pope_task.pope_aggregate_recall,
            "f1_score": pope_task.pope_aggregate_f1_score,
            "yes_ratio": pope_task.pope_aggregate_yes_ratio,
        }.items()
    }
    records = [
        {"benchmark": "pope", "id": f"random/{i}", "category": "random", "answer": a, "prediction": p}
        for i, (a, p) in enumerate(zip(answers, predictions))
    ]
    ours = score_records(records, parser="lmms_eval")
    assert lmms["accuracy"] == ours["pope/random/accuracy"] == 3 / 7
    assert lmms["precision"] == ours["pope/random/precision"] == 2 / 3
    assert lmms["recall"] == ours["pope/random/recall"] == 2 / 3
    assert lmms["f1_score"] == pytest.approx(ours["pope/random/f1"])
    assert lmms["yes_ratio"] == 4 / 7 and ours["pope/random/yes_ratio"] == 3 / 7
