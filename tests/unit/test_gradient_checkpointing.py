"""Activation checkpointing (`model.gradient_checkpointing=true`): every LLM and ViT layer is recomputed in the
backward pass, and the loss and every trainable gradient (LoRA, projector, a trained ViT) equal those without it."""

import pytest
import torch

from sinkflow.data.collate import Collator
from sinkflow.interventions.pai import Pai
from sinkflow.models.build import LoraSpec, decoder_layers, prepare_for_training
from sinkflow.module import SinkflowModule
from sinkflow.sinks.strategies.none import NoneStrategy
from sinkflow.sinks.strategies.sink_front import SinkFront


def samples(images):
    answers = ["a red circle", "two", "yes, in the top left corner of the image"]
    return [
        {
            "id": str(i),
            "image": image,
            "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": a}],
        }
        for i, (image, a) in enumerate(zip(images, answers))
    ]


@pytest.fixture(scope="module")
def images(resized_images):
    return resized_images([(64, 64), (48, 32), (32, 48)])


def lora_everywhere(checkpointing: bool):
    def prepare(model, family):
        torch.manual_seed(0)  # LoRA's A matrices draw from the global generator
        return prepare_for_training(
            model,
            family,
            freeze_vision=False,
            lora=LoraSpec(r=2, alpha=4, dropout=0.0),
            gradient_checkpointing=checkpointing,
        )

    return prepare


@pytest.mark.parametrize("family_name", ["llava", "qwen2_5_vl", "gemma3"])
def test_checkpointed_gradients_equal_the_stored_ones(family_name, images, planted_family_module):
    grads, losses, calls = [], [], []
    for checkpointing in (False, True):
        module = planted_family_module(family_name, 4, SinkFront(), lora_everywhere(checkpointing))
        assert module.hf.is_activation_checkpointing == checkpointing
        mlp = decoder_layers(module.hf)[0].mlp  # inside the checkpointed forward: entered again when recomputed
        runs = []
        hook = mlp.register_forward_pre_hook(lambda *args, runs=runs: runs.append(1))
        batch = Collator(module.processor, module.question_collator.template)(samples(images))
        loss = module(batch).loss
        loss.backward()
        hook.remove()
        calls.append(len(runs))
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None})
    assert calls == [1, 2]  # the checkpointed layer ran again in the backward pass
    torch.testing.assert_close(losses[0], losses[1], atol=0, rtol=0)
    assert grads[0].keys() == grads[1].keys()
    assert any("vision" in name or "visual" in name for name in grads[0])  # the ViT trains too
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5, msg=name)


def test_checkpointing_is_refused_with_an_intervention(tiny_family):
    model, processor, family, template = tiny_family("llava", 4)
    model = lora_everywhere(True)(model, family)
    with pytest.raises(ValueError, match="recomputes the LLM's layers in the backward pass, after intervention 'pai'"):
        SinkflowModule(model, processor, family, NoneStrategy(), intervention=Pai())
