"""`analyze.py task=<name>` as a user runs it, on the tiny LLaVA and the tiny Qwen2-VL: each registered task writes
its JSON summary and PNG figure, and reports the simulated sinks as the ViT sinks."""

import json
import re
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from sinkflow.analysis.task import ANALYSES
from test_entry_points import ROOT, SMALL_DATA, run

pytestmark = pytest.mark.slow  # every test runs analyze.py in a subprocess

MODELS = ["tiny_llava", "tiny_qwen2_vl"]
# Every task runs on its defaults (the tiny models set massive_min_layer: 1 for their 2-layer LLMs).
TASK_ARGS = {"propagation": ["propagation.max_new_tokens=4"]}
SUMMARY_NAMES = {"calibrate": "calibration"}  # the JSON a task writes, when not <task>.json


def readme_outputs() -> dict[str, list[str]]:
    """The files each task writes, as the output column of the README's table of analyses names them (with
    `relevance_<token>.png` for each of the configured tokens)."""
    section = (ROOT / "README.md").read_text().split("\n## Analyses\n", 1)[1].split("\n## ", 1)[0]
    tokens = OmegaConf.load(ROOT / "conf" / "analyze.yaml").relevance.tokens
    assert "its numbers flat in `metrics.json`" in section
    outputs = {}
    for task, cell in re.findall(r"^\| `(\w+)` \|.*\| ([^|]*) \|$", section, flags=re.MULTILINE):
        names = re.findall(r"`([\w<>]+\.(?:json|png))`", cell)
        outputs[task] = sorted(n.replace("<token>", str(t)) for n in names for t in (tokens if "<token>" in n else [0]))
    return outputs


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("task", sorted(ANALYSES))
def test_task_writes_summary_and_figure(task, model, tmp_path, env, shared_image_sets):
    out = tmp_path / task
    run(
        "analyze.py",
        [
            f"task={task}",
            f"model={model}",
            *SMALL_DATA,
            *shared_image_sets,  # the 6 images of eval_images/
            *TASK_ARGS.get(task, []),
            f"hydra.run.dir={out}",
        ],
        tmp_path,
        env,
    )
    summary = json.loads((out / f"{SUMMARY_NAMES.get(task, task)}.json").read_text())
    figures = list(out.glob("*.png"))
    assert figures and all(f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in figures)
    # the table's files, and the flat metrics.json every task writes (the section's first paragraph says so)
    written = sorted(p.name for p in out.glob("*.*") if p.suffix in (".json", ".png"))
    assert written == sorted([*readme_outputs()[task], "metrics.json"])
    # Every figure's caption, built from the model and the data that ran (6 images of the small shapes set)
    source, _, rest = summary["caption"].partition(" (SIMULATED sinks) · strategy none · sinks: norm_threshold tau=")
    assert source.startswith(f"{model}-") and "\ndata shapes-seed0-n32-e6-px64 · " in rest
    if task == "propagation":
        types = summary["mean_attention_percent"]
        assert summary["tokens"] == 6 * 16 == sum(t["tokens"] for t in types.values())  # 6 images, 16 tokens each
        assert summary["vit_sinks_equal_planted"] is True and types["vit_sink"]["tokens"] > 0
        assert sum(b["tokens"] for b in summary["bins"]) == summary["tokens"]
    if task == "massive_dims":
        assert summary["visual_tokens"] == 6 * 16 and summary["vit_sinks"] > 0
        assert summary["vit_sinks_equal_planted"] is True and summary["criterion"]["min_layer"] == 1
        assert [entry["layer"] for entry in summary["per_layer"]] == [0, 1]
        assert all(len(entry["non_sinks"]) == 5 for entry in summary["per_layer"])
    if task == "calibrate":  # 6 images; the tiny Qwen2-VL's 64 patches merge into 16 LLM tokens
        assert summary["images"] == 6 and summary["tokens_per_image"] == {"tiny_llava": 16, "tiny_qwen2_vl": 64}[model]
        assert summary["norm_max"] == pytest.approx(150.0, rel=1e-5)  # the simulated sinks' norm
        assert summary["simulated_sinks"]["recall_at_suggestion"] == 1.0


@pytest.mark.parametrize(
    "task,setting,message",
    [
        # The default model, the tiny base: an LLM of 4 layers.
        ("massive_dims", "massive_dims.min_layer=4", "massive_dims.min_layer=4 leaves none of the LLM's 4 layers"),
        ("propagation", "propagation.layers=[5,6]", "propagation.layers=[5, 6] selects none of the LLM's 4 layers"),
    ],
)
def test_a_setting_the_model_cannot_take_fails_before_anything_loads(task, setting, message, tmp_path, env):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "analyze.py"), f"task={task}", setting, f"hydra.run.dir={tmp_path / 'out'}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode != 0 and message in proc.stderr
    assert not (tmp_path / "data").exists(), "the dataset must not be generated for a run that cannot start"
