"""Each evaluation set may generate with its own answer-length limit (its toolkit's setting), in one batch."""

import pytest
import torch

from sinkflow.data.collate import Collator
from sinkflow.data.datamodule import LVLMDataModule, by_prompt_length
from sinkflow.data.templates import VicunaV1
from sinkflow.sinks.strategies.none import NoneStrategy


def question(shapes_root, i, limit=None):
    meta = {"benchmark": "open", "question": "q", "answer": "a", **({"max_new_tokens": limit} if limit else {})}
    return {
        "id": str(i),
        "image": str(shapes_root / "eval_images" / f"eval_{i:05d}.png"),
        "conversations": [{"from": "human", "value": "<image>\nWhat is the background color?"}],
        "meta": meta,
    }


def test_each_row_is_cut_at_its_own_limit_as_if_generated_alone(shapes_root, simulated_llava):
    module = simulated_llava(NoneStrategy(), seed=3).eval()
    module.generation.max_new_tokens = 3
    module.hf.generation_config.min_new_tokens = 8  # the random tiny model must not stop early, or nothing is cut
    collate = Collator(module.processor, VicunaV1(), generate=True)
    samples = [question(shapes_root, 0, limit=8), question(shapes_root, 1), question(shapes_root, 2, limit=5)]
    with torch.no_grad():
        batched = [record["prediction"] for record in module._answer(collate(samples))[0]]
        alone = [module._answer(collate([sample]))[0][0]["prediction"] for sample in samples]
    assert batched == alone
    words = [len(module.processor.tokenizer(text, add_special_tokens=False)["input_ids"]) for text in alone]
    assert words[0] > words[2] > words[1] > 0  # 8, 5 and the model's 3 tokens


def test_the_data_module_gives_each_set_its_limit_and_checks_it(tmp_path):
    def load_two():
        return [
            {"benchmark": "open", "id": str(i), "question": "q", "answer": "a", "prompt": "p", "image_path": None}
            for i in range(2)
        ]

    module = LVLMDataModule(None, None, eval_sets={"short": load_two, "long": load_two}, max_new_tokens={"long": 64})
    samples = module._load_eval()
    assert [s["meta"].get("max_new_tokens") for s in samples] == [None, None, 64, 64]  # dataset order
    ordered = by_prompt_length(samples)  # the test loader's order: the longest answers first
    assert [s["meta"].get("max_new_tokens") for s in ordered] == [64, 64, None, None]
    with pytest.raises(ValueError, match=r"`dataset.max_new_tokens.long` must be an integer >= 1, got 0"):
        LVLMDataModule(None, None, eval_sets={"long": load_two}, max_new_tokens={"long": 0})
