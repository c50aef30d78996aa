"""The shipped pre-trained tiny base (sinkflow/models/tiny_llava_shapes/): its weights are the ones its recipe run
recorded, its sizes are the model config's, and it answers local questions, as that run measured (a regression in
the pathway shows up here as a failed test, not as a quieter demo). POPE is compared with the record only: the base
has not learned existence (README "The tiny base")."""

import json
import shutil

import pytest
from omegaconf import OmegaConf

from sinkflow.config import CONF_DIR, compose_config
from sinkflow.eval.metrics import score_records
from sinkflow.models.tiny_base import INFO, SHIPPED, WEIGHTS, tiny_base_checkpoint
from sinkflow.module import SinkflowModule
from sinkflow.run import build_datamodule

RECORD = json.loads((SHIPPED / INFO).read_text())
LOCAL_SETS = ("open", "pope")  # position (open) and existence (POPE's random split): local questions


def test_the_model_config_asks_for_the_shipped_sizes_and_the_weights_match_their_hash():
    sizes = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / "tiny_llava_shapes.yaml").checkpoint)
    sizes.pop("_target_")
    assert tiny_base_checkpoint(**sizes) == str(SHIPPED)
    assert {k: RECORD["spec"][k] for k in sizes} == sizes


def test_a_changed_weight_file_or_a_size_the_base_lacks_is_refused(tmp_path):
    copy = shutil.copytree(SHIPPED, tmp_path / "base")
    with pytest.raises(ValueError, match=r"the shipped base was trained at other sizes .*text_layers=2 \(base: 4\)"):
        tiny_base_checkpoint(copy, text_layers=2)
    with (copy / WEIGHTS).open("ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match="the weights were changed outside `make tiny-base`"):
        tiny_base_checkpoint(copy)
    (copy / INFO).unlink()
    with pytest.raises(FileNotFoundError, match="rebuild it with `make tiny-base`"):
        tiny_base_checkpoint(copy)


@pytest.fixture(scope="module")
def local_scores(tmp_path_factory) -> dict[str, float]:
    """The shipped base (no routing) on the recipe's own open and POPE random-split evaluation files (they do not
    depend on the training split, so a small one is generated)."""
    root = tmp_path_factory.mktemp("sinkflow")
    cfg = compose_config(
        [
            "model=tiny_llava_shapes",
            "sink_strategy=none",
            "dataset.prepare.n_train=8",
            f"paths.root_dir={root}",
            f"paths.cache_dir={root / 'cache'}",
        ],
        config_name="evaluate",
    )
    cfg.dataset.eval_sets = {name: cfg.dataset.eval_sets[name] for name in LOCAL_SETS}
    cfg.dataset.eval_sets.pope.paths = f"{cfg.dataset.eval_sets.pope.paths}/shapes_pope_random.json"
    module = SinkflowModule.from_config(cfg.model, cfg.sink_strategy, train=False).eval()
    datamodule = build_datamodule(cfg, module, None)
    datamodule.prepare_data()
    datamodule.setup("test")
    records = [r for i, batch in enumerate(datamodule.test_dataloader()) for r in module.predict_step(batch, i)]
    return score_records(records)


def test_the_base_answers_local_questions_as_its_recipe_run_measured(local_scores):
    for key in ("open/position/accuracy", "pope/random/f1", "open/local/accuracy"):
        assert local_scores[key] == pytest.approx(RECORD["metrics"][key], abs=0.03), key
    assert local_scores["open/position/accuracy"] >= 0.8  # chance: 0.5 (left or right)
