"""`test_time_registers`: "Vision Transformers Don't Need Trained Registers" (arXiv 2506.08010), training-free.

A few MLP neurons of the ViT ("register neurons") write the high-norm outliers into patch tokens. The intervention
appends one extra token to the ViT's sequence (zeros, after the embeddings) and, at each layer holding register
neurons, moves their activation off the patches into it: the patches' activations on those neurons become 0 and the
extra token's take one value per layer, the largest in magnitude over all tokens and those neurons (signed), as the
official code does. The extra token is dropped before the projector reads the ViT: the LLM gets the same number of
tokens, and the sinks are gone at the source. The cleanest ablation of the paper's claim that sinks carry global
information.

Register neurons are given per layer (`neurons: {layer: [indices]}`) or found on the first batch the ViT sees
(then kept): the tokens whose norm after ViT layer `detect_layer` exceeds `threshold` are the outliers; every
neuron of the layers up to `highest_layer` is scored by its mean absolute activation on them; the `top_k` best
neurons over those layers are the register neurons. The official code's defaults for OpenCLIP ViT-B/16: detect at
the last layer, threshold 30, layers up to 5, top 10 (LLaVA's CLIP-L/14-336 needs its own calibration: the lists for
ViT-L are not public in the code). Towers: CLIP / SigLIP / InternViT / Idefics3-style (embeddings, encoder layers
with an MLP activation); Qwen's windowed ViTs are refused.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch
from torch import nn

from sinkflow.checks import number
from sinkflow.interventions.base import Intervention

log = logging.getLogger(__name__)


def vit_parts(tower: nn.Module) -> tuple[nn.Module, nn.Module, list[nn.Module], list[nn.Module]]:
    """The tower's embeddings, its encoder, its encoder layers and the MLP activation of each."""
    inner = getattr(tower, "vision_model", tower)
    encoder = getattr(inner, "encoder", None)
    layers = getattr(encoder, "layers", None) or getattr(encoder, "layer", None)
    if not hasattr(inner, "embeddings") or layers is None or not all(hasattr(layer, "mlp") for layer in layers):
        raise ValueError(
            f"test_time_registers needs a ViT with embeddings and encoder layers with an MLP (CLIP, SigLIP, "
            f"InternViT, Idefics3); {type(inner).__name__} has none"
        )
    return inner.embeddings, encoder, list(layers), [layer.mlp.activation_fn for layer in layers]


class TestTimeRegisters(Intervention, name="test_time_registers"):
    """Register neurons' activation moves from the patches into one extra token."""

    __test__ = False  # not a pytest class despite its name

    def __init__(
        self,
        neurons: dict[int, list[int]] | None = None,
        top_k: int = 10,
        highest_layer: int = 5,
        threshold: float = 30.0,
        detect_layer: int = -1,
    ):
        super().__init__()
        self.neurons = None if neurons is None else {int(k): [int(n) for n in v] for k, v in neurons.items()}
        self.top_k = number("intervention.top_k", top_k, integer=True, at_least=1)
        self.highest_layer = number("intervention.highest_layer", highest_layer, integer=True, at_least=0)
        self.threshold = number("intervention.threshold", threshold, above=0)
        self.detect_layer = detect_layer
        self.register_norms: torch.Tensor | None = None  # [images]: the extra token's norm at the last layer

    @contextmanager
    def encoding(self, model: nn.Module, family) -> Iterator[None]:
        tower = family.vision_tower(model)
        embeddings, encoder, layers, activations = vit_parts(tower)
        with ExitStack() as stack:
            stack.callback(embeddings.register_forward_hook(_append_register).remove)
            preparing = self._preparing(encoder, layers, activations)
            stack.callback(encoder.register_forward_pre_hook(preparing, with_kwargs=True).remove)
            for index, activation in enumerate(activations):
                stack.callback(activation.register_forward_hook(self._moving(index)).remove)
            stack.callback(tower.register_forward_hook(self._dropping).remove)
            self._calibrating = False
            yield

    def _preparing(self, encoder: nn.Module, layers: list[nn.Module], activations: list[nn.Module]):
        """The encoder's pre-hook: its mask widened for the extra token; register neurons found on the first batch."""

        def prepare(module, args, kwargs):
            mask = kwargs.get("attention_mask")
            if mask is not None:
                kwargs["attention_mask"] = _widened(mask)
            if self.neurons is None and not self._calibrating:
                hidden = kwargs["inputs_embeds"] if "inputs_embeds" in kwargs else args[0]
                self.neurons = self._find(
                    encoder, layers, activations, hidden[:, :-1], {**kwargs, "attention_mask": mask}
                )
            return args, kwargs

        return prepare

    def _find(self, encoder, layers, activations, hidden, kwargs) -> dict[int, list[int]]:
        """Register neurons from one pass of the encoder without the extra token (see the module docstring)."""
        recorded: dict[int, torch.Tensor] = {}
        outputs: list[torch.Tensor] = []
        self._calibrating = True
        with ExitStack() as stack:
            for index, activation in enumerate(activations):
                hook = activation.register_forward_hook(
                    lambda m, a, out, i=index: recorded.__setitem__(i, out.detach())
                )
                stack.callback(hook.remove)
            for layer in layers:
                hook = layer.register_forward_hook(
                    lambda m, a, out: outputs.append((out[0] if isinstance(out, tuple) else out).detach())
                )
                stack.callback(hook.remove)
            encoder(hidden, **{k: v for k, v in kwargs.items() if k not in ("inputs_embeds", "hidden_states")})
        self._calibrating = False
        states = outputs[self.detect_layer]
        outliers = states.float().norm(dim=-1) > self.threshold  # [B, T]
        if not outliers.any():
            raise ValueError(
                f"test_time_registers: no token's norm after ViT layer {self.detect_layer} exceeds intervention."
                f"threshold={self.threshold} (the largest is {float(states.float().norm(dim=-1).max()):.1f}): no "
                "register neurons to find; lower the threshold or give intervention.neurons"
            )
        scores = torch.stack(
            [recorded[i][outliers].abs().float().mean(0) for i in range(min(self.highest_layer + 1, len(recorded)))]
        )  # [layers, neurons]
        best = scores.flatten().topk(min(self.top_k, scores.numel())).indices
        neurons: dict[int, list[int]] = {}
        for flat in best.tolist():
            neurons.setdefault(flat // scores.shape[1], []).append(flat % scores.shape[1])
        log.info("test_time_registers: register neurons %s (found on the first batch)", neurons)
        return neurons

    def _moving(self, index: int):
        """The MLP activation hook of layer `index`: its register neurons' activation moves into the extra token."""

        def move(module, args, output):
            if self._calibrating or not self.neurons or index not in self.neurons:
                return output
            chosen = torch.tensor(self.neurons[index], device=output.device)
            values = output[..., chosen]  # [B, T, n]
            flat = values.flatten(1)
            peak = flat.gather(1, flat.abs().argmax(1, keepdim=True))  # signed, largest magnitude per image
            moved = output.clone()
            patches = moved[:, :-1]
            patches[..., chosen] = 0.0
            moved[:, -1, chosen] = peak.to(output.dtype)
            return moved

        return move

    def _dropping(self, module, args, output):
        """The tower's output without the extra token (its norm at the last layer kept in `register_norms`)."""
        if self._calibrating:
            return output
        self.register_norms = output.last_hidden_state[:, -1].float().norm(dim=-1).detach()
        output.last_hidden_state = output.last_hidden_state[:, :-1]
        if output.hidden_states is not None:
            output.hidden_states = tuple(h[:, :-1] for h in output.hidden_states)
        return output


def _append_register(module, args, output):
    """The embeddings' output with one zero token appended (the register)."""
    return torch.cat([output, output.new_zeros(output.shape[0], 1, output.shape[-1])], dim=1)


def _widened(mask: torch.Tensor) -> torch.Tensor:
    """An attention mask over one more token, which every token may attend to and which attends to every token."""
    if mask.dim() == 2:
        return torch.nn.functional.pad(mask, (0, 1), value=1)
    allowed = True if mask.dtype == torch.bool else 0.0
    return torch.nn.functional.pad(mask, (0, 1, 0, 1), value=allowed)
