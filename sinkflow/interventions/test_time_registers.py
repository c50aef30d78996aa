"""`test_time_registers`: "Vision Transformers Don't Need Trained Registers" (arXiv 2506.08010), training-free.

A few MLP neurons of the ViT ("register neurons") write the high-norm outliers into patch tokens. The intervention
gives each image one extra token (zeros, with no position) and, at each layer holding register neurons, moves their
activation off the patches into it: the patches' activations on those neurons become 0 (a CLS token keeps its own)
and the extra token's take one value per layer and image, the largest in magnitude over the image's tokens and those
neurons (signed), as the official code does. A neuron is a unit of the MLP's hidden activation, the input of its
output projection. The extra token never reaches the projector: the LLM gets the same number of tokens, and the sinks
are gone at the source. The cleanest ablation of the paper's claim that sinks carry global information.

Where the extra token lives depends on the tower:
- CLIP / SigLIP / InternViT / Idefics3 (a batch of sequences): appended after the embeddings, as the official code
  does, every token attending to it; dropped from the tower's outputs.
- Qwen2-VL / Qwen2.5-VL / Qwen3-VL (every image's patches packed into one sequence, split by `cu_seqlens`): inserted
  after each image's (each video frame's) patches before every block and taken out after it, with an identity rotary
  position; the patch merger and Qwen3-VL's DeepStack mergers never see it. In Qwen2.5-VL's window-attention blocks
  it is a window of its own (a token belongs to one window), so the patches attend to it in the full-attention
  blocks only.

Register neurons are given per layer (`neurons: {layer: [indices]}`) or found on the first batch the ViT sees
(then kept): the tokens whose norm after ViT layer `detect_layer` exceeds `threshold` are the outliers; every
neuron of the layers up to `highest_layer` is scored by its mean absolute activation on them; the `top_k` best
neurons over those layers are the register neurons. The official code's defaults for OpenCLIP ViT-B/16: detect at
the last layer, threshold 30, layers up to 5, top 10 (LLaVA's CLIP-L/14-336 needs its own calibration: the lists for
ViT-L are not public in the code).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from sinkflow.checks import number
from sinkflow.interventions.base import Intervention

log = logging.getLogger(__name__)

OUTPUT_PROJECTIONS = ("fc2", "down_proj", "linear_fc2")  # CLIP, SigLIP, InternViT, Idefics3, Qwen2-VL; 2.5; 3


@dataclass
class TokenLayout:
    """Where the extra tokens sit among the tower's tokens, flattened (a batch's rows one after the other):
    `images` [tokens] the image (or frame) of each token, `registers` [images] each image's extra token, `zeroed`
    [tokens] the tokens whose register-neuron activations become 0 (every patch)."""

    images: torch.Tensor
    registers: torch.Tensor
    zeroed: torch.Tensor


class TestTimeRegisters(Intervention, name="test_time_registers"):
    """Register neurons' activation moves from the patches into one extra token per image."""

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
        self.register_norms: torch.Tensor | None = None  # [images]: the extra token's norm after the last layer
        self._calibrating = False
        self._layout: TokenLayout | None = None

    @contextmanager
    def encoding(self, model: nn.Module, family) -> Iterator[None]:
        tower = family.vision_tower(model)
        packed = hasattr(tower, "blocks") and hasattr(tower, "patch_embed")
        placement = PackedRegisters(self, tower) if packed else AppendedRegister(self, tower)
        with ExitStack() as stack:
            stack.callback(tower.register_forward_pre_hook(self._finding(tower, placement), with_kwargs=True).remove)
            for handle in placement.hooks():
                stack.callback(handle.remove)
            for index, projection in enumerate(placement.projections):
                stack.callback(projection.register_forward_pre_hook(self._moving(index)).remove)
            yield

    def _finding(self, tower: nn.Module, placement):
        """The tower's pre-hook: register neurons found on the first batch, from a pass without the extra token."""

        def find(module, args, kwargs):
            if self.neurons is None and not self._calibrating:
                self.neurons = self._find(tower, placement, args, kwargs)
            return None

        return find

    def _find(self, tower, placement, args, kwargs) -> dict[int, list[int]]:
        """Register neurons from one pass of the tower (see the module docstring)."""
        recorded: dict[int, torch.Tensor] = {}
        outputs: list[torch.Tensor] = []
        self._calibrating = True
        try:
            with ExitStack() as stack:
                for index, projection in enumerate(placement.projections):
                    hook = projection.register_forward_pre_hook(
                        lambda m, a, i=index: recorded.__setitem__(i, a[0].detach())
                    )
                    stack.callback(hook.remove)
                for layer in placement.layers:
                    hook = layer.register_forward_hook(
                        lambda m, a, out: outputs.append((out[0] if isinstance(out, tuple) else out).detach())
                    )
                    stack.callback(hook.remove)
                tower(*args, **kwargs)
        finally:
            self._calibrating = False
        states = outputs[self.detect_layer]
        outliers = states.float().norm(dim=-1) > self.threshold  # [B, T] or [tokens]
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
        """The pre-hook of layer `index`'s MLP output projection: its register neurons' activation moves into each
        image's extra token."""

        def move(module, args):
            if self._calibrating or not self.neurons or index not in self.neurons:
                return None
            hidden = args[0]
            layout = self._layout
            flat = hidden.reshape(-1, hidden.shape[-1])
            chosen = torch.tensor(self.neurons[index], device=hidden.device)
            peak = _signed_peaks(flat[:, chosen], layout.images, len(layout.registers))
            moved = flat.clone()
            moved[layout.zeroed.nonzero()[:, :1], chosen] = 0.0
            moved[layout.registers[:, None], chosen] = peak[:, None].to(moved.dtype)
            return (moved.view_as(hidden), *args[1:])

        return move


def _signed_peaks(values: torch.Tensor, images: torch.Tensor, count: int) -> torch.Tensor:
    """[count] per image, the signed value of largest magnitude among its tokens' `values` [tokens, neurons] (the
    first token holding it)."""
    strongest = values.abs().argmax(1, keepdim=True)
    signed = values.gather(1, strongest).squeeze(1)  # [tokens]
    magnitude = signed.abs()
    peak = magnitude.new_zeros(count).scatter_reduce(0, images, magnitude, "amax", include_self=False)
    position = torch.arange(len(signed), device=values.device)
    holds = magnitude == peak[images]
    first = torch.full((count,), len(signed), device=values.device).scatter_reduce(
        0, images[holds], position[holds], "amin"
    )
    return signed[first]


def _output_projection(mlp: nn.Module) -> nn.Module:
    for name in OUTPUT_PROJECTIONS:
        if hasattr(mlp, name):
            return getattr(mlp, name)
    raise ValueError(f"test_time_registers: the ViT MLP {type(mlp).__name__} has none of {OUTPUT_PROJECTIONS}")


class AppendedRegister:
    """CLIP / SigLIP / InternViT / Idefics3 towers ([B, T, D] sequences): one zero token appended after the
    embeddings; the encoder's mask widened for it; dropped from the tower's outputs."""

    def __init__(self, owner: TestTimeRegisters, tower: nn.Module):
        inner = getattr(tower, "vision_model", tower)
        encoder = getattr(inner, "encoder", None)
        layers = getattr(encoder, "layers", None) or getattr(encoder, "layer", None)
        if not hasattr(inner, "embeddings") or layers is None or not all(hasattr(layer, "mlp") for layer in layers):
            raise ValueError(
                "test_time_registers needs a ViT with embeddings and encoder layers with an MLP (CLIP, SigLIP, "
                f"InternViT, Idefics3) or Qwen's packed blocks; {type(inner).__name__} has neither"
            )
        self.owner, self.tower, self.embeddings, self.encoder = owner, tower, inner.embeddings, encoder
        self.layers = list(layers)
        self.projections = [_output_projection(layer.mlp) for layer in layers]
        self.has_cls = hasattr(inner.embeddings, "class_embedding") or hasattr(inner.embeddings, "cls_token")

    def hooks(self) -> list:
        return [
            self.embeddings.register_forward_hook(self._append),
            self.encoder.register_forward_pre_hook(self._widen, with_kwargs=True),
            self.tower.register_forward_hook(self._drop),
        ]

    def _append(self, module, args, output):
        """The embeddings' output with one zero token appended (the register)."""
        if self.owner._calibrating:
            return output
        batch, length = output.shape[0], output.shape[1] + 1
        position = torch.arange(batch * length, device=output.device)
        zeroed = torch.ones(batch, length, dtype=torch.bool, device=output.device)
        zeroed[:, -1] = False
        zeroed[:, 0] &= not self.has_cls
        self.owner._layout = TokenLayout(position // length, position[length - 1 :: length], zeroed.flatten())
        return torch.cat([output, output.new_zeros(batch, 1, output.shape[-1])], dim=1)

    def _widen(self, module, args, kwargs):
        """The encoder's mask over one more token, which every token may attend to and which attends to every
        token."""
        mask = kwargs.get("attention_mask")
        if mask is None or self.owner._calibrating:
            return None
        if mask.dim() == 2:
            kwargs["attention_mask"] = torch.nn.functional.pad(mask, (0, 1), value=1)
        else:
            allowed = True if mask.dtype == torch.bool else 0.0
            kwargs["attention_mask"] = torch.nn.functional.pad(mask, (0, 1, 0, 1), value=allowed)
        return args, kwargs

    def _drop(self, module, args, output):
        """The tower's output without the extra token (its norm after the last layer kept in `register_norms`)."""
        if self.owner._calibrating:
            return output
        self.owner.register_norms = output.last_hidden_state[:, -1].float().norm(dim=-1).detach()
        output.last_hidden_state = output.last_hidden_state[:, :-1]
        if output.hidden_states is not None:
            output.hidden_states = tuple(h[:, :-1] for h in output.hidden_states)
        return output


class PackedRegisters:
    """Qwen2-VL / Qwen2.5-VL / Qwen3-VL towers (one packed [tokens, D] sequence split by `cu_seqlens`): before every
    block each frame's extra token is inserted after the frame's patches (in its frame's segment in full-attention
    blocks, a segment of its own in window-attention ones), with an identity rotary position; after the block it is
    taken out again and carried to the next."""

    def __init__(self, owner: TestTimeRegisters, tower: nn.Module):
        self.owner, self.tower = owner, tower
        self.layers = list(tower.blocks)
        self.projections = [_output_projection(block.mlp) for block in self.layers]
        # per forward: where each frame's patches end in the packed sequence, each patch's and extra token's place
        # with the extras, the order putting [patches, extras] there, and the extra tokens' states between blocks
        self.ends = self.tokens = self.registers = self.order = self.states = None

    def hooks(self) -> list:
        handles = [self.tower.register_forward_pre_hook(self._frames, with_kwargs=True)]
        for index, block in enumerate(self.layers):
            handles.append(block.register_forward_pre_hook(self._insert, with_kwargs=True))
            handles.append(block.register_forward_hook(self._take_out(last=index == len(self.layers) - 1)))
        return handles

    def _frames(self, module, args, kwargs):
        """The frames of this forward (from `grid_thw`, as the tower splits its sequence) and their extra tokens."""
        if self.owner._calibrating:
            return None
        grid = kwargs["grid_thw"] if "grid_thw" in kwargs else args[1]
        lengths = torch.repeat_interleave(grid[:, 1] * grid[:, 2], grid[:, 0])
        self.ends = lengths.cumsum(0)
        frames, total = len(lengths), int(self.ends[-1])
        self.tokens = torch.arange(total, device=grid.device)
        self.tokens += torch.searchsorted(self.ends, self.tokens, right=True)  # each patch's place with the extras
        self.registers = self.ends + torch.arange(frames, device=grid.device)
        width = total + frames
        images = torch.zeros(width, dtype=torch.long, device=grid.device)
        images[self.tokens] = torch.repeat_interleave(torch.arange(frames, device=grid.device), lengths)
        images[self.registers] = torch.arange(frames, device=grid.device)
        zeroed = torch.ones(width, dtype=torch.bool, device=grid.device)
        zeroed[self.registers] = False
        self.order = torch.cat([self.tokens, self.registers]).argsort()
        self.states = None
        self.owner._layout = TokenLayout(images, self.registers, zeroed)
        return None

    def _insert(self, block, args, kwargs):
        if self.owner._calibrating:
            return None
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        if self.states is None:
            self.states = hidden.new_zeros(len(self.registers), hidden.shape[-1])
        widened = torch.cat([hidden, self.states.to(hidden.dtype)])[self.order]
        cos, sin = kwargs["position_embeddings"]
        kwargs["position_embeddings"] = (
            torch.cat([cos, cos.new_ones(len(self.registers), cos.shape[-1])])[self.order],
            torch.cat([sin, sin.new_zeros(len(self.registers), sin.shape[-1])])[self.order],
        )
        kwargs["cu_seqlens"] = self._segments(kwargs["cu_seqlens"])
        if kwargs.get("max_seqlen") is not None:
            kwargs["max_seqlen"] = int(kwargs["cu_seqlens"].diff().max())
        if "hidden_states" in kwargs:
            kwargs["hidden_states"] = widened
            return args, kwargs
        return (widened, *args[1:]), kwargs

    def _segments(self, cu_seqlens: torch.Tensor) -> torch.Tensor:
        """The block's segment boundaries with the extra tokens: each boundary moves past the extras before it; a
        block that splits frames into windows gets each extra token as a segment of its own."""
        ends = self.ends.to(cu_seqlens)
        moved = cu_seqlens + torch.searchsorted(ends, cu_seqlens, right=True).to(cu_seqlens.dtype)
        frame_starts = torch.cat([ends.new_zeros(1), ends])
        if torch.equal(cu_seqlens, frame_starts):  # full attention: the extra token in its frame's segment
            return moved
        alone = self.registers.to(cu_seqlens)
        return torch.cat([moved, alone]).unique(sorted=True)

    def _take_out(self, last: bool):
        def take_out(block, args, output):
            if self.owner._calibrating:
                return output
            self.states = output[self.registers]
            if last:
                self.owner.register_norms = self.states.float().norm(dim=-1).detach()
            return output[self.tokens]

        return take_out
