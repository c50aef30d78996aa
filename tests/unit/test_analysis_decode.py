"""Decoding isolated visual tokens: batched isolation equals running each token alone; the main-object rank."""

import json
import re

import pytest
import torch
from omegaconf import OmegaConf

from sinkflow.analysis import decode
from sinkflow.analysis.context import AnalysisContext
from sinkflow.caption import Caption
from sinkflow.models.tiny import TinyLlavaSpec, build_tiny_llava
from sinkflow.models.tiny_qwen import TinyQwenSpec, build_tiny_qwen
from sinkflow.sinks.strategies.none import NoneStrategy


@pytest.fixture(scope="module")
def tiny_llava():
    return build_tiny_llava(TinyLlavaSpec(seed=2))


@pytest.mark.parametrize("with_bos", [True, False])
def test_batched_isolation_equals_each_token_alone_through_the_whole_model(tiny_llava, with_bos):
    model, _ = tiny_llava
    tokens = torch.randn(7, model.config.text_config.hidden_size, generator=torch.Generator().manual_seed(0))
    bos = model.get_input_embeddings().weight[1] if with_bos else None
    with torch.no_grad():
        ours = decode.isolated_logits(model, tokens, bos, chunk_size=3)
        for j, token in enumerate(tokens):
            sequence = torch.stack([bos, token]) if with_bos else token[None]
            alone = model(inputs_embeds=sequence[None]).logits[0, -1]
            torch.testing.assert_close(ours[j], alone, atol=1e-5, rtol=0)


def test_batched_isolation_on_qwen_equals_language_model_one_by_one():
    model, _ = build_tiny_qwen(TinyQwenSpec(seed=2))
    tokens = torch.randn(5, model.config.text_config.hidden_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = decode.isolated_logits(model, tokens)
        for j, token in enumerate(tokens):
            hidden = model.model.language_model(inputs_embeds=token[None, None]).last_hidden_state
            torch.testing.assert_close(ours[j], model.lm_head(hidden)[0, -1], atol=1e-5, rtol=0)


def test_main_object_rank_on_hand_built_logits():
    logits = torch.tensor(
        [
            [0.0, 5.0, 1.0, 2.0, 9.0],  # candidates (ids 1, 2, 3) -> 5, 1, 2: id 1 first
            [0.0, 1.0, 3.0, 2.0, 9.0],  # id 2 first
            [0.0, 2.0, 2.0, 0.0, 0.0],
        ]
    )  # tie between ids 1 and 2: the first wins
    candidates = torch.tensor([1, 2, 3])
    hits = decode.main_object_hits(logits, candidates, torch.tensor([0, 0, 0]))
    assert hits.tolist() == [True, False, True]
    assert decode.main_object_hits(logits, candidates, torch.tensor([2, 1, 1])).tolist() == [False, True, False]
    assert decode.rank1_rate([hits[:2], hits[2:]]) == pytest.approx(2 / 3)
    assert decode.rank1_rate([]) != decode.rank1_rate([])  # NaN: no token of that kind


def test_candidate_words_must_start_with_different_tokens(tiny_llava):
    _, processor = tiny_llava
    ids = decode.first_token_ids(processor.tokenizer, ("circle", "square", "triangle"), "decode.label")
    assert len(set(ids.tolist())) == 3
    with pytest.raises(ValueError, match="decode.label: candidate words share a first token"):
        decode.first_token_ids(processor.tokenizer, ("circle", "circles"), "decode.label")


def test_run_decodes_each_image_once_and_ranks_the_main_object(
    tiny_llava, shapes_root, tmp_path, image_question_batches, simulated_llava
):
    model, processor = tiny_llava
    module = simulated_llava(NoneStrategy(), model=tiny_llava).eval()
    # Two questions per image, as in the evaluation sets: each image is decoded once.
    loader = image_question_batches(processor, 10, "How many shapes are there?")
    settings = OmegaConf.create(
        {"max_images": 4, "top_k": 3, "bos": True, "label": "largest_shape", "scenes": str(shapes_root / "scenes.json")}
    )
    caption = Caption("tiny", "none", None, "shapes", True)
    summary = decode.run(
        AnalysisContext(module, lambda: iter(loader), settings, tmp_path, task="decode", caption=caption)
    )
    assert summary["images"] == 4 and summary["bos"]
    assert summary["tokens"] == {"sink": 8, "nonsink": 56}  # 2 planted sinks of 16 tokens per image
    assert sum(f for _, f in summary["top1_words"]["sink"]) == pytest.approx(1.0)
    main = summary["main_object"]
    assert main["chance"] == pytest.approx(1 / 5) and main["unlabelled"] == 0
    assert all(0 <= main["rank1_rate"][kind] <= 1 for kind in ("sink", "nonsink"))
    assert len(summary["examples"][0]["sink"][0]) == 3
    assert json.loads((tmp_path / "decode.json").read_text())["images"] == 4
    assert (tmp_path / "decode.png").stat().st_size > 0
    labels = "('background', 'count', 'dominant_color', 'largest_shape')"
    with pytest.raises(ValueError, match=re.escape(f"`decode.label` must be one of {labels}, got 'cat'")):
        decode.run(AnalysisContext(module, lambda: iter(loader), OmegaConf.merge(settings, {"label": "cat"}), tmp_path))
