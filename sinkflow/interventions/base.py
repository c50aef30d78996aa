"""The second extension point beside the routing strategies: interventions inside the model while it runs.

A strategy decides which visual tokens reach the LLM and in what order; an intervention changes how the model treats
them once they are there (the attention the LLM pays them). The two compose: any intervention runs with any
strategy. Interventions register by name in `INTERVENTIONS` (`class Lsg(Intervention, name="lsg")`) and are
chosen with `intervention=<name>` (conf/intervention/<name>.yaml); `none` changes nothing, so parity with plain
transformers is untouched.

`SinkflowModule` runs every LLM forward (training, the routing pass, generation with or without the KV cache) inside
`intervention.acting(model, columns)`, with the `LlmColumns` of the rows: where the visual tokens and the ViT sinks
sit. An attention intervention (`AttentionIntervention`) routes the attention of its layers through
`intervened_attention`, which wraps the model's own implementation (SDPA or eager, whichever it loaded with):
- `keys` may rescale the keys before the model's attention runs (LSG: exact under SDPA);
- `edits_rows` interventions recompute the query rows they touch (`touched`) in float32 with the model's mask,
  editing the pre-softmax logits (`edit_logits`) or the post-softmax weights (`edit_weights`), and keep the model's
  output for every other row, so their cost is the touched rows' (one per generated token) rather than an eager
  pass over the whole sequence.

Layers are given as the paper gives them, for its model (LLaVA-1.5-7B: 32 LLM layers): `reference_depth` maps them
onto this model's depth (layer i -> floor(i x depth / reference_depth)); null takes them as they are.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from transformers import AttentionInterface

from sinkflow.checks import number
from sinkflow.models.attention_patch import patched_attention
from sinkflow.models.build import decoder_layers
from sinkflow.pathway import LlmColumns
from sinkflow.registry import Registry

INTERVENED = "sinkflow_intervention"  # the attention implementation of a module an intervention acts in
# module -> (intervention, layer index, the module's own attention function)
_ACTING: dict[nn.Module, tuple[AttentionIntervention, int, object]] = {}


class Intervention(nn.Module):
    """Changes how the model runs (`acting`); an `nn.Module`, so that trainable parts (LSG's gates) are its own
    parameters, optimised and saved with the run like a strategy's."""

    name: ClassVar[str]
    training_free: ClassVar[bool] = True  # False: the intervention has parts that must be trained first
    needs_sinks: bool = False  # True: it reads the ViT sinks' columns (the module runs the detector)

    def __init_subclass__(cls, name: str | None = None, **kwargs):
        super().__init_subclass__(**kwargs)
        if name is not None:
            cls.name = name
            INTERVENTIONS.register(name, cls)

    def setup(self, model: nn.Module) -> None:
        """Build parts shaped like the model's (no-op). The module calls it once the model is loaded."""

    def visual_tokens(self, columns: LlmColumns) -> torch.Tensor:
        """[B]: the visual tokens each row's LLM kept in its last forward (its input's, unless the intervention
        removed some)."""
        return columns.visual.sum(1)

    @contextmanager
    def acting(self, model: nn.Module, columns: LlmColumns | None) -> Iterator[None]:
        """While inside, `model`'s LLM runs with the intervention; `columns` are its input rows' (None: text only)."""
        yield

    @contextmanager
    def encoding(self, model: nn.Module, family) -> Iterator[None]:
        """While inside, `model`'s ViT runs with the intervention (test-time registers); nothing by default."""
        yield


@dataclass
class AttentionCall:
    """One call of an intervened attention module: its layer; the columns of its query rows (`queries` [q]) and of
    its keys (`keys` [K]: the last K, as a sliding-window cache keeps them); where the visual tokens and the ViT
    sinks sit among those keys ([B, K]; the rows' columns, then text columns for the tokens generated since); and per
    row [B] the columns where its image blocks start and end (the first after the last; a row without an image:
    both its length) and where its answer starts (its prompt's end)."""

    layer: int
    queries: torch.Tensor
    keys: torch.Tensor
    visual: torch.Tensor
    sinks: torch.Tensor | None
    image_start: torch.Tensor
    image_end: torch.Tensor
    answer_start: torch.Tensor


class AttentionIntervention(Intervention):
    """An intervention in the attention of chosen LLM layers (see the module docstring)."""

    edits_rows: ClassVar[bool] = False  # True: `touched` rows are recomputed with `edit_logits` / `edit_weights`

    def __init__(self, layers: Sequence[int] | None = None, reference_depth: int | None = 32):
        super().__init__()
        if reference_depth is not None:
            number("intervention.reference_depth", reference_depth, integer=True, at_least=1)
        self.layers_given, self.reference_depth = None if layers is None else list(layers), reference_depth
        self.columns: LlmColumns | None = None
        self._ends: dict[int, int] = {}  # per layer, the columns its keys have reached (a cache grows them)

    def layer_indices(self, depth: int) -> list[int]:
        """The LLM layers (of `depth`) it acts in: all when none are given; given ones mapped from the reference
        depth."""
        if self.layers_given is None:
            return list(range(depth))
        reference = self.reference_depth or depth
        outside = [i for i in self.layers_given if not 0 <= i < reference]
        if outside:
            raise ValueError(
                f"intervention.layers {outside} outside [0, {reference}) "
                + ("(intervention.reference_depth)" if self.reference_depth else f"(the LLM's {depth} layers)")
            )
        return sorted({i * depth // reference for i in self.layers_given})

    def attention_layers(self, depth: int) -> list[int]:
        """The layers whose attention it changes (its layers, by default)."""
        return self.layer_indices(depth)

    @contextmanager
    def acting(self, model: nn.Module, columns: LlmColumns | None) -> Iterator[None]:
        if columns is None or not bool(columns.visual.any()):
            yield  # nothing visual to act on
            return
        if self.needs_sinks and columns.sinks is None:
            raise ValueError(f"intervention {self.name!r} reads the ViT sinks: give the strategy a detector")
        layers = decoder_layers(model)
        states = {
            layers[index].self_attn: (self, index, _base_attention(layers[index].self_attn))
            for index in self.attention_layers(len(layers))
        }
        self.columns, self._ends = columns, {}
        try:
            with ExitStack() as stack:
                stack.enter_context(patched_attention(states, _ACTING, INTERVENED))
                for handle in self.hooks(model, columns):
                    stack.callback(handle.remove)
                stack.callback(self.forget)
                yield
        finally:
            self.columns = None

    def hooks(self, model: nn.Module, columns: LlmColumns) -> list:
        """Hooks (anything with `remove()`) it needs on the model while it acts beside the attention (none by
        default: LSG reads a layer's output, VAR the states entering its layers, FastV shortens the rows)."""
        return []

    def forget(self) -> None:
        """Drops what it kept about the rows it acted on (nothing by default)."""

    def call(self, layer: int, n_queries: int, n_keys: int) -> AttentionCall:
        """The context of one attention call with `n_queries` rows over `n_keys` keys: a call whose queries are all
        its keys starts the sequence (a forward without cache, or a prefill); any other continues it."""
        columns = self.columns
        end = n_keys if n_queries == n_keys else self._ends[layer] + n_queries
        self._ends[layer] = end

        def keys_of(flags: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.pad(flags, (0, max(end - flags.shape[1], 0)))[:, end - n_keys : end]

        device = columns.visual.device
        length, has_image = columns.image.shape[1], columns.image.any(1)
        first = columns.image.long().argmax(1)
        after_last = length - columns.image.flip(1).long().argmax(1)
        return AttentionCall(
            layer=layer,
            queries=torch.arange(end - n_queries, end, device=device),
            keys=torch.arange(end - n_keys, end, device=device),
            visual=keys_of(columns.visual),
            sinks=None if columns.sinks is None else keys_of(columns.sinks),
            image_start=torch.where(has_image, first, length),
            image_end=torch.where(has_image, after_last, length),
            answer_start=columns.answer_start,
        )

    def inspect(self, query: torch.Tensor, key: torch.Tensor, mask, scaling: float | None, call: AttentionCall) -> None:
        """Sees the call's queries [B, H, q, d] and keys [B, H_kv, K, d] (after RoPE) and the model's mask before the
        attention runs (nothing by default; FastV ranks the visual tokens here)."""

    def keys(self, key: torch.Tensor, call: AttentionCall) -> torch.Tensor:
        """The keys [B, H_kv, K, d] the attention runs with (unchanged by default)."""
        return key

    def touched(self, call: AttentionCall) -> torch.Tensor:
        """[B, q] bool: the query rows whose attention `edit_logits` / `edit_weights` change."""
        raise NotImplementedError

    def edit_logits(self, logits: torch.Tensor, call: AttentionCall, rows: torch.Tensor) -> torch.Tensor:
        """The pre-softmax logits [B, H, R, K] of query rows `rows` [R] (indices into the call's rows); masked keys
        hold -inf."""
        return logits

    def edit_weights(self, weights: torch.Tensor, call: AttentionCall, rows: torch.Tensor) -> torch.Tensor:
        """The post-softmax weights [B, H, R, K] of query rows `rows` [R]."""
        return weights


def holds_prompt(hidden: torch.Tensor, columns: LlmColumns) -> bool:
    """Whether a layer's states [B, T, D] are those of a forward over the whole prompt (without cache, or the
    prefill), not a decoding step's."""
    return hidden.shape[1] >= columns.visual.shape[1]


def _base_attention(attention: nn.Module):
    """The attention function `attention` runs without an intervention: the registered one of its implementation,
    or its modeling file's eager one."""
    implementation = attention.config._attn_implementation
    if implementation == "eager":
        return sys.modules[type(attention).__module__].eager_attention_forward
    if implementation not in AttentionInterface._global_mapping:
        raise ValueError(f"interventions run on eager or SDPA attention, not {implementation!r}")
    return AttentionInterface._global_mapping[implementation]


def attention_rows(query, key, mask, scaling: float | None, call: AttentionCall, rows: torch.Tensor, softcap=None):
    """Post-softmax attention [B, H, R, K] of query rows `rows` (indices into the call's rows), in float32 under the
    model's mask, and the keys each may attend to [B or 1, 1, R, K]."""
    batch, heads, _, dim = query.shape
    scale = scaling if scaling is not None else dim**-0.5
    # Grouped query heads against their key head by broadcasting (no copy of the keys per query head).
    grouped = query[:, :, rows].float().view(batch, key.shape[1], heads // key.shape[1], len(rows), dim)
    logits = (grouped @ key.float().transpose(-1, -2)[:, :, None] * scale).view(batch, heads, len(rows), -1)
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    allowed = allowed_keys(mask, call, rows)
    return logits.masked_fill(~allowed, float("-inf")), allowed


def allowed_keys(mask: torch.Tensor | None, call: AttentionCall, rows: torch.Tensor) -> torch.Tensor:
    """[B or 1, 1, R, K] bool: the keys query rows `rows` may attend to under the model's mask (SDPA's boolean one,
    eager's additive one, or none: causal)."""
    if mask is None:
        return (call.keys[None, :] <= call.queries[rows][:, None])[None, None]
    picked = mask[:, :, rows] if mask.shape[2] > 1 else mask
    return picked if picked.dtype == torch.bool else picked == 0


def intervened_attention(module: nn.Module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The attention of a module an intervention acts in: the model's own, with the intervention's keys and, for the
    rows it touches, its edits."""
    intervention, layer, base = _ACTING[module]
    call = intervention.call(layer, query.shape[2], key.shape[2])
    intervention.inspect(query, key, attention_mask, scaling, call)
    key = intervention.keys(key, call)
    out, weights = base(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    if not intervention.edits_rows:
        return out, weights
    touched = intervention.touched(call)
    rows = touched.any(0).nonzero().squeeze(1)
    if len(rows) == 0:
        return out, weights
    if dropout and module.training:
        raise ValueError(f"intervention {intervention.name!r} recomputes attention rows: it needs attention dropout 0")
    logits, _ = attention_rows(query, key, attention_mask, scaling, call, rows, kwargs.get("softcap"))
    weights_rows = torch.softmax(intervention.edit_logits(logits, call, rows), dim=-1)
    weights_rows = intervention.edit_weights(weights_rows, call, rows)
    batch, heads, n_rows, n_keys = weights_rows.shape
    grouped = weights_rows.view(batch, value.shape[1], heads // value.shape[1], n_rows, n_keys)
    recomputed = (grouped @ value.float()[:, :, None]).view(batch, heads, n_rows, -1)
    recomputed = recomputed.to(out.dtype).transpose(1, 2)  # [B, R, H, d], as the model's output
    if torch.is_grad_enabled():
        out = out.clone()  # the model's output may be saved for its backward
    out[:, rows] = torch.where(touched[:, rows, None, None], recomputed, out[:, rows])
    return out, weights


AttentionInterface.register(INTERVENED, intervened_attention)

INTERVENTIONS: Registry[type[Intervention]] = Registry("intervention", "sinkflow.interventions")
