"""Every config in every group composes, instantiates what it names, and validation names bad keys."""

import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

import sinkflow.config  # noqa: F401  (resolvers)
from sinkflow.config import validate

CONF = Path(__file__).resolve().parents[2] / "conf"
GROUPS = ["model", "sink_strategy", "dataset", "trainer", "logger", "callbacks", "paths", "hydra", "experiment"]


def options(group):
    """The configs of `group` a user picks; `_<name>.yaml` files are bases that options inherit, not options."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml") if not p.stem.startswith("_"))


def bases(group):
    return sorted(p.stem for p in (CONF / group).glob("_*.yaml"))


def compose_cfg(name, overrides, tmp_path):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides, return_hydra_config=True)
    # Resolve hydra:runtime.* the way a real run would.
    OmegaConf.set_readonly(cfg.hydra, False)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path / "out")
        cfg.hydra.runtime.cwd = str(tmp_path)
    HydraConfig.instance().set_config(cfg)
    return OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])


CASES = [
    (name, group, option)
    for name in ("train", "evaluate")
    for group in GROUPS
    for option in options(group)
    if group != "hydra"
]


def test_every_group_has_options():
    for group in GROUPS:
        assert options(group), f"conf/{group} is empty"
    assert {"tiny_llava", "llava15_7b", "llava15_13b"} <= set(options("model"))
    assert {"cpu", "gpu", "ddp", "debug"} <= set(options("trainer"))
    assert {"wandb", "csv", "none"} <= set(options("logger"))


@pytest.mark.parametrize("name,group,option", CASES, ids=[f"{n}-{g}={o}" for n, g, o in CASES])
def test_config_composes_and_resolves(name, group, option, tmp_path):
    cfg = compose_cfg(name, [f"{group}={option}"], tmp_path)
    OmegaConf.resolve(cfg)  # every interpolation resolves
    required = dict(cfg.get("required") or {})
    if required:  # an experiment that cannot run without these: each one missing is named, in order
        for key, what in required.items():
            with pytest.raises(ValueError, match=re.escape(f"`{key}` must be set for this experiment: {what}")):
                validate(cfg)
            OmegaConf.update(cfg, key, "set")
    validate(cfg)
    assert cfg.paths.output_dir == str(tmp_path / "out")
    if group == "experiment" and "wandb" in (cfg.get("logger") or {}):
        assert cfg.logger.wandb.offline is True  # W&B stays offline by default


def composed_model(option):
    """`model=<option>` as Hydra composes it, interpolations unresolved."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=[f"model={option}"]).model


def leaf_values(node, prefix=""):
    """(dotted key, value) of every non-mapping value a config file sets itself (its defaults list aside)."""
    for key, value in node.items():
        if key == "defaults":
            continue
        if isinstance(value, dict):
            yield from leaf_values(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@pytest.mark.parametrize("option", options("model") + bases("model"))
def test_model_configs_inherit_and_repeat_no_value_their_bases_set(option):
    """Each model config states only what differs from its bases, so that full copies cannot creep back."""
    own = OmegaConf.to_container(OmegaConf.load(CONF / "model" / f"{option}.yaml"))
    parents = [name for name in own.get("defaults", []) if name != "_self_"]
    if option in options("model"):
        assert parents and all(name in bases("model") for name in parents), f"{option} inherits no base: {parents}"
    assert own.get("defaults", ["_self_"])[-1] == "_self_"  # the file's own keys override its bases'
    inherited = dict(leaf_values(OmegaConf.to_container(OmegaConf.merge({}, *map(composed_model, parents)))))
    repeated = [key for key, value in leaf_values(own) if key in inherited and inherited[key] == value]
    assert not repeated, f"conf/model/{option}.yaml repeats its bases' {repeated}"


def test_every_model_base_is_inherited():
    inherited = {
        name
        for option in options("model") + bases("model")
        for name in OmegaConf.load(CONF / "model" / f"{option}.yaml").get("defaults", [])
    }
    assert bases("model") and set(bases("model")) <= inherited


@pytest.mark.parametrize(
    "base,missing", [("_common", "family"), ("_llava", "checkpoint"), ("_qwen_vl", "checkpoint"), ("_tiny", "family")]
)
def test_a_model_base_picked_as_a_model_fails_validation_naming_what_it_lacks(base, missing, tmp_path):
    message = f"config key `model.{missing}` is missing (see conf/model/)"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        validate(compose_cfg("train", [f"model={base}"], tmp_path))


@pytest.mark.parametrize("option", options("sink_strategy"))
def test_every_strategy_config_instantiates_its_registered_strategy_and_a_detector(option, tmp_path):
    from hydra.utils import instantiate

    from sinkflow.sinks.detectors.norm_threshold import NormThreshold
    from sinkflow.sinks.strategies.base import STRATEGIES

    cfg = compose_cfg("train", [f"sink_strategy={option}"], tmp_path)
    strategy = instantiate(cfg.sink_strategy.strategy)
    assert type(strategy) is STRATEGIES[option] and strategy.name == option
    detector = instantiate(cfg.sink_strategy.detector)
    assert isinstance(detector, NormThreshold) and detector.name == "norm_threshold" and detector.tau == 100.0
    topk = instantiate(
        compose_cfg(
            "train", [f"sink_strategy={option}", "sink_strategy/detector=topk", "sink_strategy.detector.k=3"], tmp_path
        ).sink_strategy.detector
    )
    assert topk.name == "topk" and topk.k == 3


def test_the_training_free_sweep_is_a_multirun_over_every_strategy(tmp_path):
    cfg = compose_cfg("evaluate", ["experiment=training_free_sweep"], tmp_path)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        hydra_cfg = compose(
            config_name="evaluate", overrides=["experiment=training_free_sweep"], return_hydra_config=True
        ).hydra
    from sinkflow.sinks.strategies.base import STRATEGIES

    assert str(hydra_cfg.mode) == "RunMode.MULTIRUN"
    # Every training-free routing strategy; token-budget pruning is compared with the other methods
    # (experiment=methods_table).
    assert set(hydra_cfg.sweeper.params.sink_strategy.split(",")) == {
        name for name, cls in STRATEGIES.items() if cls.training_free and not cls.prunes
    }
    assert cfg.use_checkpoint_strategy is False


def test_analyze_config_composes(tmp_path):
    cfg = compose_cfg("analyze", [], tmp_path)
    OmegaConf.resolve(cfg)
    validate(cfg, groups=("model", "sink_strategy", "dataset"))
    assert cfg.task == "calibrate" and cfg.calibrate.split == "eval"


def test_wandb_goes_online_only_when_asked(tmp_path, monkeypatch):
    cfg = compose_cfg("train", ["logger=wandb"], tmp_path)
    assert cfg.logger.wandb.offline is True
    monkeypatch.setenv("WANDB_MODE", "online")
    assert compose_cfg("train", ["logger=wandb"], tmp_path).logger.wandb.offline is False
    assert compose_cfg("train", ["logger=wandb", "logger.wandb.offline=true"], tmp_path).logger.wandb.offline


def test_real_checkpoints_point_at_llava_hf(tmp_path):
    for size in ("7b", "13b"):
        cfg = compose_cfg("train", [f"model=llava15_{size}"], tmp_path)
        assert cfg.model.checkpoint == f"llava-hf/llava-1.5-{size}-hf"
        assert cfg.model.lora.r == 128 and cfg.model.optim.projector_lr == 2e-5


@pytest.mark.parametrize(
    "override,message",
    [
        ("model.lora.r=0", "`model.lora.r` must be an integer >= 1, got 0"),
        ("model.lora.r=2.5", "`model.lora.r` must be an integer >= 1, got 2.5"),
        ("~model.lora.r", "`model.lora.r` must be an integer >= 1, got None"),
        ("model.lora.alpha=0", "`model.lora.alpha` must be a number > 0, got 0"),
        ("model.lora.dropout=1.0", "`model.lora.dropout` must be a number >= 0 and < 1, got 1.0"),
        (
            "model.lora.target_modules=[]",
            "`model.lora.target_modules` is empty: list LLM linear names or set model.lora=null",
        ),
        ("model.optim.lr=-1", "`model.optim.lr` must be a number > 0, got -1"),
        ("model.optim.projector_lr=abc", "`model.optim.projector_lr` must be a number > 0, got 'abc'"),
        ("++model.optim.strategy_lr=0", "`model.optim.strategy_lr` must be a number > 0 or null, got 0"),
        ("model.optim.weight_decay=-0.1", "`model.optim.weight_decay` must be a number >= 0, got -0.1"),
        ("model.optim.warmup_ratio=1.5", "`model.optim.warmup_ratio` must be a number >= 0 and <= 1, got 1.5"),
        ("++model.optim.min_lr_ratio=-1", "`model.optim.min_lr_ratio` must be a number >= 0 and <= 1, got -1"),
        ("++model.optim.betas=[0.9,1.0]", "`model.optim.betas[1]` must be a number >= 0 and < 1, got 1.0"),
        ("++model.optim.betas=0.9", "`model.optim.betas` must be two numbers (beta1, beta2), got 0.9"),
        ("~model.family", "config key `model.family` is missing (see conf/model/)"),
    ],
)
def test_validation_names_the_key(override, message, tmp_path):
    cfg = compose_cfg("train", [override], tmp_path)
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        validate(cfg)


def test_validation_accepts_a_null_strategy_lr_and_boundary_values(tmp_path):
    from sinkflow.module import OptimSpec

    cfg = compose_cfg(
        "train",
        [
            "++model.optim.strategy_lr=null",
            "model.lora.dropout=0.0",
            "model.optim.warmup_ratio=1.0",
            "++model.optim.betas=[0.0,0.999]",
        ],
        tmp_path,
    )
    validate(cfg)  # raises on a value out of range
    spec = OptimSpec(**OmegaConf.to_container(cfg.model.optim))  # and so would the module's own check
    assert (spec.strategy_lr, spec.warmup_ratio, list(spec.betas)) == (None, 1.0, [0.0, 0.999])


@pytest.mark.parametrize(
    "override,node,message",
    [
        (
            "sink_strategy.detector.tau=-1",
            "sink_strategy.detector",
            "`sink_strategy.detector.tau` must be a number > 0, got -1",
        ),
        (
            "model.simulated_sinks.k=0",
            "model.simulated_sinks",
            "`model.simulated_sinks.k` must be an integer >= 1, got 0",
        ),
        (
            "sink_strategy.strategy.seed=-3",
            "sink_strategy.strategy",
            "`sink_strategy.strategy.seed` must be an integer >= 0, got -3",
        ),
    ],
)
def test_a_bad_number_in_the_real_configs_fails_at_instantiation_naming_the_key(override, node, message, tmp_path):
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    overrides = ["sink_strategy=random_control", override] if "strategy.seed" in override else [override]
    cfg = compose_cfg("train", overrides, tmp_path)
    validate(cfg)  # validation of the composed config does not see constructor options
    with pytest.raises(InstantiationException, match=re.escape(message)) as caught:
        instantiate(OmegaConf.select(cfg, node))
    assert isinstance(caught.value.__cause__, ValueError) and str(caught.value.__cause__) == message


@pytest.mark.parametrize(
    "option,checkpoint,family",
    [
        ("qwen2_vl_2b", "Qwen/Qwen2-VL-2B-Instruct", "Qwen2VLFamily"),
        ("qwen2_vl_7b", "Qwen/Qwen2-VL-7B-Instruct", "Qwen2VLFamily"),
        ("qwen25_vl_3b", "Qwen/Qwen2.5-VL-3B-Instruct", "Qwen25VLFamily"),
        ("qwen25_vl_7b", "Qwen/Qwen2.5-VL-7B-Instruct", "Qwen25VLFamily"),
    ],
)
def test_qwen_configs_name_their_checkpoint_family_and_chat_template(option, checkpoint, family, tmp_path):
    from hydra.utils import instantiate

    cfg = compose_cfg("train", [f"model={option}"], tmp_path)
    assert cfg.model.checkpoint == checkpoint and cfg.model.simulated_sinks is None
    assert type(instantiate(cfg.model.family)).__name__ == family
    assert cfg.model.template._target_.endswith("ProcessorChatTemplate")


def test_the_parser_choice_reaches_every_scorer(tmp_path):
    from hydra.utils import instantiate

    from sinkflow.eval.callback import PredictionsCallback

    cfg = compose_cfg("train", ["parser=lmms_eval"], tmp_path)
    assert instantiate(cfg.callbacks.benchmark_validation).parser == "lmms_eval"
    assert PredictionsCallback(str(tmp_path / "p.jsonl"), parser=cfg.parser).parser == "lmms_eval"
    with pytest.raises(
        ValueError,
        match=r"`parser` must be one of \('official', 'lmms_eval', 'vlmevalkit'\), "
        "got 'llava'",
    ):
        PredictionsCallback(str(tmp_path / "p.jsonl"), parser="llava")


def test_the_global_local_study_trains_every_arm_on_routing_aware_shapes(tmp_path):
    from hydra.utils import instantiate

    from sinkflow.sinks.strategies.base import STRATEGIES

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        hydra_cfg = compose(
            config_name="train", overrides=["experiment=global_local_study"], return_hydra_config=True
        ).hydra
    arms = hydra_cfg.sweeper.params["+global_local_arm"].split(",")
    assert str(hydra_cfg.mode) == "RunMode.MULTIRUN"
    assert arms == ["none", "sinks_only", "drop_sinks", "dual_mlp", "reweight", "cot_route"]
    assert sorted(arms) == options("global_local_arm")
    for arm in arms:
        cfg = compose_cfg("train", ["experiment=global_local_study", f"+global_local_arm={arm}"], tmp_path)
        validate(cfg)
        strategy = instantiate(cfg.sink_strategy.strategy)
        assert type(strategy) is STRATEGIES[arm]
        assert getattr(strategy, "trains_projectors", True)  # no frozen random projectors in the simulation
        assert cfg.dataset.prepare.routing_questions and set(cfg.dataset.eval_sets) - {"open"} == {
            k for k, v in cfg.dataset.eval_sets.items() if v is None
        }


def test_the_default_training_is_dual_mlp_with_lora(tmp_path):
    cfg = compose_cfg("train", [], tmp_path)
    assert cfg.sink_strategy.strategy._target_.endswith("DualMLP") and cfg.model.lora is not None


def test_the_rew_experiment_trains_only_the_router_with_the_papers_recipe(tmp_path):
    cfg = compose_cfg("train", ["experiment=diysink_rew", "sink_strategy.strategy.projectors=p.safetensors"], tmp_path)
    assert cfg.sink_strategy.strategy._target_.endswith("Reweight") and cfg.sink_strategy.strategy.projectors
    assert cfg.model.lora is None and cfg.model.train_projector is False
    assert (cfg.model.optim.strategy_lr, cfg.trainer.max_epochs, cfg.dataset.batch_size) == (1e-2, 10, 20)


def test_no_group_config_marks_a_value_mandatory_with_question_marks():
    """A `???` in a group option merged over a primary config's default is silently replaced by that default (the
    DIYSink experiments ran stage `both` without their `stage: ???`): experiments list such keys under `required`."""
    marked = [
        f"{p.relative_to(CONF)}:{n}"
        for p in CONF.rglob("*.yaml")
        if p.parent != CONF
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if "???" in line.split("#")[0]
    ]
    assert not marked, marked
