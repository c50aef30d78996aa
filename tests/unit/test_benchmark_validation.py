"""Benchmark scores at validation end: a fixed subset per benchmark, scored exactly as at test time; which sets
the evaluation loads."""

from functools import partial

import lightning as L
import pytest

from sinkflow.benchmarks.mmstar import load_mmstar
from sinkflow.benchmarks.pope import load_pope
from sinkflow.data.datamodule import LVLMDataModule
from sinkflow.data.templates import VicunaV1
from sinkflow.eval.metrics import score_records
from sinkflow.eval.validation import BenchmarkValidation
from sinkflow.models.families.llava import LlavaFamily
from sinkflow.models.tiny import TinyLlavaSpec, build_tiny_llava
from sinkflow.module import SinkflowModule
from sinkflow.sinks.strategies.none import NoneStrategy


def test_validation_end_logs_official_scores_of_the_first_questions(shapes_root):

    model, processor = build_tiny_llava(TinyLlavaSpec(seed=5))
    module = SinkflowModule(model, processor, LlavaFamily(), NoneStrategy(), generation={"max_new_tokens": 3})
    datamodule = LVLMDataModule(
        train_json=str(shapes_root / "train.json"),
        image_root=str(shapes_root),
        val_fraction=0.1,
        batch_size=4,
        eval_sets={
            "pope": partial(load_pope, shapes_root / "pope", shapes_root / "eval_images"),
            "mmstar": partial(load_mmstar, shapes_root / "mmstar" / "mmstar.jsonl", shapes_root / "eval_images"),
        },
    ).bind(processor, VicunaV1())
    callback = BenchmarkValidation(every_n_epochs=1, limit=5)
    trainer = L.Trainer(callbacks=[callback], logger=False, enable_progress_bar=False, enable_checkpointing=False)
    trainer.validate(module, datamodule=datamodule)
    questions = callback.questions(datamodule)
    assert [q["meta"]["benchmark"] for q in questions] == ["pope"] * 5 + ["mmstar"] * 5
    batch = datamodule.generation_collator()(questions)
    expected = score_records([dict(m, prediction=t.strip()) for m, t in zip(batch["meta"], module.generate(batch))])
    logged = {k.removeprefix("val/"): v.item() for k, v in trainer.callback_metrics.items() if k != "val/loss"}
    assert {k: v for k, v in logged.items() if not k.startswith("sinks")} == pytest.approx(expected)
    assert "pope/f1_mean" in logged and "mmstar/overall" in logged
    with pytest.raises(ValueError, match="every_n_epochs must be >= 1"):
        BenchmarkValidation(every_n_epochs=0)


def test_an_evaluation_set_configured_as_null_is_left_out(shapes_root):
    datamodule = LVLMDataModule(
        train_json=None,
        image_root=str(shapes_root),
        eval_sets={
            "pope": None,
            "mmstar": partial(load_mmstar, shapes_root / "mmstar" / "mmstar.jsonl", shapes_root / "eval_images"),
        },
    )
    datamodule.setup("test")
    assert list(datamodule.eval_sets) == ["mmstar"]
    assert datamodule.test_set and {s["meta"]["benchmark"] for s in datamodule.test_set} == {"mmstar"}
