"""`lsg`: Layer-wise Sink Gating, "When Sinks Help or Hurt" (arXiv 2604.03316), trained gates on a frozen model.

A gate at layer l reads the hidden state of the prompt's last token after layer l (LayerNorm, then D -> 64 -> 2,
softmax) and gives two key scales, (rho_sinks, rho_rest) summing to 1; in layer l + 1 every visual key is scaled by
its group's, the ViT sinks' keys by rho_sinks and the other visual tokens' by rho_rest (text keys unscaled), which
scales their pre-softmax logits: Attn(Q, diag(s) K, V). Keys are rescaled before the model's own attention runs, so
SDPA stays SDPA. The gate's last layer starts at zero: (0.5, 0.5), the paper's initialisation (a uniform half key
scale on the image, not the ungated model). Trained with the next-token loss on a frozen model
(`experiment=lsg`); the paper's best single gate is layer 10 of LLaVA-1.5-7B's 32, its stacked five 3, 6, 7, 10, 19.

The gate reads the prompt's last token (the one that predicts the first answer token: `answer_start - 1`, in
training the token before the first supervised one), found in the forward that holds the prompt, and its scales
stay for the decoding steps, so generation with and without the KV cache agree.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sinkflow.interventions.base import AttentionCall, AttentionIntervention, holds_prompt
from sinkflow.models.build import decoder_layers
from sinkflow.pathway import LlmColumns

GATE_WIDTH = 64  # the paper's D -> 64 -> 2


class Gate(nn.Module):
    """LayerNorm + D -> 64 -> 2 MLP + softmax: (rho_sinks, rho_rest) from one hidden state."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, GATE_WIDTH), nn.GELU(), nn.Linear(GATE_WIDTH, 2))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.mlp(self.norm(hidden.float())), dim=-1)


class Lsg(AttentionIntervention, name="lsg"):
    """Trained gates scale the keys of the ViT sinks and of the other visual tokens in the layer after theirs."""

    training_free = False
    needs_sinks = True

    def __init__(self, layers: Sequence[int] | None = (10,), reference_depth: int | None = 32):
        super().__init__(layers, reference_depth)
        self.gates = nn.ModuleDict()
        self.scales: dict[int, torch.Tensor] = {}  # attention layer -> [B, 2] while acting

    def setup(self, model: nn.Module) -> None:
        layers = decoder_layers(model)
        width = layers[0].self_attn.config.hidden_size
        for index in self.layer_indices(len(layers)):
            if index + 1 >= len(layers):
                raise ValueError(
                    f"intervention.layers: a gate at layer {index} scales the keys of layer {index + 1}, but the LLM "
                    f"has {len(layers)} layers"
                )
            if str(index) not in self.gates:
                self.gates[str(index)] = Gate(width)

    def attention_layers(self, depth: int) -> list[int]:
        return [index + 1 for index in self.layer_indices(depth)]

    def hooks(self, model: nn.Module, columns: LlmColumns) -> list:
        layers = decoder_layers(model)
        return [layers[i].register_forward_hook(self._gating(i, columns)) for i in self.layer_indices(len(layers))]

    def forget(self) -> None:
        self.scales.clear()

    def _gating(self, index: int, columns: LlmColumns):
        """A hook on decoder layer `index`: in the forward over the prompt, layer `index + 1`'s scales from the
        prompt's last token."""
        last = (columns.answer_start - 1).clamp(0, columns.visual.shape[1] - 1)

        def gate(layer, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            if holds_prompt(hidden, columns):
                rows = hidden[torch.arange(hidden.shape[0], device=hidden.device), last.to(hidden.device)]
                self.scales[index + 1] = self.gates[str(index)](rows)

        return gate

    def keys(self, key: torch.Tensor, call: AttentionCall) -> torch.Tensor:
        rho = self.scales[call.layer].to(key.dtype)  # [B, 2]
        scale = torch.where(call.sinks, rho[:, :1], rho[:, 1:])
        scale = torch.where(call.visual, scale, torch.ones_like(scale))  # [B, K]
        return key * scale[:, None, :, None]
