"""What every analysis writes: its JSON summary and PNGs, and (with logger=wandb) the same to W&B."""

import json

import matplotlib.pyplot as plt
import pytest
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from omegaconf import OmegaConf

from sinkflow.analysis.context import AnalysisContext, flatten
from sinkflow.plotting import titled


def test_summaries_flatten_to_numeric_scalars():
    summary = {"model": "tiny", "tokens": 96, "types": {"vit_sink": {"mean": 0.5, "ok": True}}, "nan": float("nan")}
    assert flatten(summary) == {"tokens": 96.0, "types/vit_sink/mean": 0.5}


def test_write_saves_files_and_logs_scalars_and_images(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    wandb = WandbLogger(save_dir=str(tmp_path / "wb"), offline=True, project="sinkflow-test")
    csv = CSVLogger(str(tmp_path / "csv"))
    ctx = AnalysisContext(
        module=None,
        batches=lambda: iter(()),
        settings=OmegaConf.create({}),
        output_dir=tmp_path / "out",
        loggers=[wandb, csv],
        task="probe",
    )
    summary = {"caption": "tiny · strategy none\ndata shapes · 12 images", "accuracy": {"sink_mean": 0.9}, "images": 12}
    untitled, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    with pytest.raises(ValueError, match="^probe: figure 'probe' is not titled with the summary's caption"):
        ctx.write(summary, {"probe": untitled})
    assert not (tmp_path / "out").exists()  # nothing written
    figure = titled(untitled, "a line", summary["caption"])
    assert ctx.write(summary, {"probe": figure}) == summary
    assert json.loads((tmp_path / "out" / "probe.json").read_text()) == summary
    # flat, as the multirun table reads it
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == {
        "probe/accuracy/sink_mean": 0.9,
        "probe/images": 12,
    }
    assert (tmp_path / "out" / "probe.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    header, values = (tmp_path / "csv" / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines()
    logged = dict(zip(header.split(","), values.split(",")))
    assert float(logged["probe/accuracy/sink_mean"]) == 0.9 and float(logged["probe/images"]) == 12
    run_dir = next((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    wandb.experiment.finish()
    assert list(run_dir.glob("files/media/images/probe/probe_*.png"))  # the figure went to W&B


def test_analyses_take_the_questions_with_one_image_and_every_image_once(caplog):
    from sinkflow.analysis.context import distinct_images, one_image_each

    samples = [
        {"id": "a", "image": "x.png"},
        {"id": "b", "image": ["y.png", "x.png"]},  # MMMU-style: several images, left out of analyses
        {"id": "c", "image": None},
        {"id": "d", "image": "z.png"},
    ]
    with caplog.at_level("INFO"):
        assert [s["id"] for s in one_image_each(samples)] == ["a", "c", "d"]
    assert "1 questions with several images left out" in caplog.text
    assert [(s["id"], s["image"]) for s in distinct_images(samples)] == [("a", "x.png"), ("b", "y.png"), ("d", "z.png")]
