"""compose_llava: a pretrained ViT + a pretrained causal LM saved once as an HF LLaVA (TinyLLaVA-style), built here
from tiny SigLIP / CLIP / Qwen2 checkpoints saved offline; the model configs and DIYSink experiments that use it."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from PIL import Image
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    SiglipConfig,
    SiglipImageProcessor,
    SiglipModel,
    SiglipVisionConfig,
    SiglipVisionModel,
)

import sinkflow.models.compose as compose
from sinkflow.data.templates import ProcessorChatTemplate, VicunaV1
from sinkflow.models.build import load_pretrained
from sinkflow.models.families.llava import LlavaFamily
from sinkflow.models.tiny import build_tokenizer
from test_configs import compose_cfg  # pytest puts tests/unit on sys.path (no __init__.py)

IMAGE, PATCH = 36, 8  # 4x4 patches; 36 is not a multiple of 8, like so400m's 384 px in 14 px patches
VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": IMAGE,
    "patch_size": PATCH,
}
PROMPT = "USER: <image>\nWhat is the background color? ASSISTANT:"


def qwen_tokenizer():
    """Qwen2 base style: no bos, `<|endoftext|>` as eos and pad, ChatML markers as extra special tokens."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    return build_tokenizer(
        300,
        specials=specials,
        bos=None,
        eos="<|endoftext|>",
        pad="<|endoftext|>",
        unk=None,
        extra_special_tokens=specials[1:],
    )


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Tiny HF checkpoints: SigLIP (vision-only and whole), CLIP, a Qwen2 LM with and without tokenizer."""
    root = tmp_path_factory.mktemp("sources")
    torch.manual_seed(0)
    siglip = SiglipImageProcessor(size={"height": IMAGE, "width": IMAGE})
    models = {
        "siglip": (SiglipVisionModel(SiglipVisionConfig(**VISION)), siglip),
        "siglip_full": (
            SiglipModel(
                SiglipConfig(
                    vision_config=VISION,
                    text_config={
                        "hidden_size": 32,
                        "intermediate_size": 64,
                        "num_hidden_layers": 1,
                        "num_attention_heads": 2,
                        "vocab_size": 64,
                    },
                )
            ),
            siglip,
        ),
        "clip": (
            CLIPVisionModel(CLIPVisionConfig(**VISION)),
            CLIPImageProcessor(size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE}),
        ),
    }
    tokenizer = qwen_tokenizer()
    lm = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            tie_word_embeddings=True,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=None,
        )
    )
    models["qwen"] = (lm, tokenizer)
    models["qwen_no_tokenizer"] = (lm, None)
    # Qwen2-0.5B's embedding has rows past its tokenizer (151936 for 151646 tokens): the image token takes one.
    models["qwen_padded"] = (
        Qwen2ForCausalLM(Qwen2Config(**{**lm.config.to_dict(), "vocab_size": len(tokenizer) + 8})),
        tokenizer,
    )
    dirs = {}
    for name, (model, extra) in models.items():
        dirs[name] = str(root / name)
        model.save_pretrained(dirs[name])
        if extra is not None:
            extra.save_pretrained(dirs[name])
    return dirs


@pytest.fixture(scope="module")
def composed(sources, tmp_path_factory):
    return compose.compose_llava(tmp_path_factory.mktemp("cache"), sources["siglip"], sources["qwen"])


def test_vision_and_language_weights_come_from_the_sources(sources, composed):
    model, processor = load_pretrained(composed, family=LlavaFamily())
    vision = SiglipVisionModel.from_pretrained(sources["siglip"])
    lm = Qwen2ForCausalLM.from_pretrained(sources["qwen"])
    tower = model.model.vision_tower.state_dict()
    assert all(torch.equal(tower[k], v) for k, v in vision.state_dict().items())
    language = model.model.language_model.state_dict()
    for key, value in lm.model.state_dict().items():
        if key != "embed_tokens.weight":
            assert torch.equal(language[key], value), key
    # The image token got one new row; the LM's own rows (and the tied head) are untouched.
    n_vocab = lm.config.vocab_size
    embeddings = model.get_input_embeddings().weight
    assert embeddings.shape[0] == n_vocab + 1 == len(processor.tokenizer)
    assert torch.equal(embeddings[:n_vocab], lm.get_input_embeddings().weight)
    assert torch.equal(model.lm_head.weight[:n_vocab], lm.lm_head.weight)
    assert model.config.image_token_id == n_vocab and processor.image_token == "<image>"
    assert model.config.vision_feature_layer == -2 and model.config.projector_hidden_act == "gelu"


def test_an_lm_with_spare_embedding_rows_keeps_its_size(sources, tmp_path):
    model, processor = load_pretrained(compose.compose_llava(tmp_path, sources["siglip"], sources["qwen_padded"]))
    lm = Qwen2ForCausalLM.from_pretrained(sources["qwen_padded"])
    assert torch.equal(model.get_input_embeddings().weight, lm.get_input_embeddings().weight)
    assert model.config.image_token_id == len(processor.tokenizer) - 1 < lm.config.vocab_size


@pytest.mark.parametrize("vision,n_tokens", [("siglip", 15), ("siglip_full", 15), ("clip", 16)])
def test_the_processor_expands_the_image_token_to_the_features_the_model_makes(sources, vision, n_tokens, tmp_path):
    # 16 patches; "default" drops the first token: SigLIP's first patch (TinyLLaVA's 728 for so400m), CLIP's CLS.
    checkpoint = compose.compose_llava(tmp_path, sources[vision], sources["qwen"])
    model, processor = load_pretrained(checkpoint, family=LlavaFamily())
    inputs = processor(images=[Image.new("RGB", (50, 40), "red")], text=[PROMPT], return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == n_tokens
    assert model.config.image_seq_length == n_tokens
    with torch.no_grad():
        logits = model(**inputs).logits
        features = LlavaFamily().encode(model, dict(inputs)).features
    assert logits.shape == (1, inputs["input_ids"].shape[1], len(processor.tokenizer))
    assert features.shape[1] == n_tokens


def test_the_chat_template_renders_like_the_vicuna_template_with_the_lm_eos(composed):
    _, processor = load_pretrained(composed, family=LlavaFamily())
    turns = [("user", "<image>\nWhat is this?"), ("assistant", "A cat."), ("user", "And the color?")]
    ours, theirs = (
        t.render(processor, turns, add_generation_prompt=True) for t in (VicunaV1(), ProcessorChatTemplate())
    )
    assert ours.text == theirs.text and "A cat.<|endoftext|>USER:" in ours.text


def test_composing_again_reuses_the_saved_checkpoint(sources, composed, monkeypatch):
    def rebuild(spec):
        raise AssertionError("rebuilt a cached checkpoint")

    monkeypatch.setattr(compose, "build_composed_llava", rebuild)
    cache = str(Path(composed).parent)
    assert compose.compose_llava(cache, sources["siglip"], sources["qwen"]) == composed
    with pytest.raises(AssertionError, match="rebuilt"):  # another argument is another checkpoint
        compose.compose_llava(cache, sources["siglip"], sources["qwen"], seed=1)


@pytest.mark.parametrize(
    "vision,language,kwargs,error,message",
    [
        ("missing", "qwen", {}, OSError, "could not load the vision checkpoint .*hf download"),
        ("qwen", "qwen", {}, ValueError, "is a 'qwen2' model; compose_llava takes a SigLIP or CLIP checkpoint"),
        ("siglip", "siglip_full", {}, ValueError, "is a 'siglip' model, not a causal LM"),
        ("siglip", "qwen_no_tokenizer", {}, ValueError, "has no tokenizer"),
        ("siglip", "qwen", {"projector": "mlp3x_gelu"}, ValueError, "`model.checkpoint.projector` must be one of"),
    ],
)
def test_bad_sources_fail_clearly(sources, vision, language, kwargs, error, message, tmp_path):
    paths = dict(sources, missing=str(tmp_path / "no-such-checkpoint"))
    with pytest.raises(error, match=message):
        compose.compose_llava(tmp_path, paths[vision], paths[language], **kwargs)


def test_the_tinyllava_config_composes_the_checkpoint_it_names(sources, tmp_path):
    model = compose_cfg("train", ["model=tinyllava_siglip_qwen2_05b"], tmp_path).model
    node = model.checkpoint
    assert node._target_ == "sinkflow.models.compose.compose_llava"
    assert (node.vision, node.language) == ("google/siglip-so400m-patch14-384", "Qwen/Qwen2-0.5B")
    assert type(instantiate(model.family)) is LlavaFamily and model.simulated_sinks is None
    assert model.dtype == "bfloat16" and model.lora.r == 128 and model.optim.lr == 2e-4
    # The same node, pointed at the tiny sources, builds a checkpoint load_pretrained reads.
    checkpoint = instantiate(node, cache_dir=str(tmp_path), vision=sources["siglip"], language=sources["qwen"])
    assert load_pretrained(checkpoint, family=LlavaFamily())[0].config.image_seq_length == 15


@pytest.mark.parametrize("stage,lr,batch,accumulate", [(1, 1e-3, 32, 2), (2, 2e-5, 8, 4)])
def test_the_tinyllava_diysink_stages_carry_the_recipe(stage, lr, batch, accumulate, tmp_path):
    cfg = compose_cfg("train", [f"experiment=diysink_tinyllava_stage{stage}"], tmp_path)
    assert cfg.model.checkpoint.language == "Qwen/Qwen2-0.5B"
    assert cfg.sink_strategy.strategy._target_.endswith("DualMLP")
    assert cfg.model.optim.projector_lr == lr and cfg.model.optim.warmup_ratio == 0.03
    assert (cfg.dataset.batch_size, cfg.trainer.accumulate_grad_batches, cfg.trainer.max_epochs) == (
        batch,
        accumulate,
        1,
    )
    assert (cfg.model.lora is None) == (stage == 1) and cfg.model.train_projector is False
    assert cfg.sink_strategy.detector._target_.endswith(".AdaptiveDrop")  # tau = 100 is CLIP's
    if stage == 2:
        assert cfg.model.optim.lr == lr and cfg.model.lora.r == 128
