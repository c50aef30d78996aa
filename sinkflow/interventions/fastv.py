"""`fastv`: FastV (arXiv 2403.06764), training-free: after layer K, the visual tokens the prompt's last token
attends to least are removed from the sequence (hidden states, positions, mask and KV cache), not masked.

The prompt's last token's attention at layer K - 1, averaged over heads, ranks each row's visual tokens; each row
keeps the top round((1 - ratio) x its visual tokens) (with `keep_sinks`, the ViT sinks first, within that budget),
with every text token. From layer K on the rows hold only those tokens, each at its original position (RoPE), left
re-padded to the longest row; layers before K keep everything (in the cache too: the KV-cache variant of the
official code, which prunes once, in the prefill). A forward over labels gets its outputs back at their columns (the
removed visual columns read zeros: nothing is supervised there). Defaults: the paper's K = 2, ratio 0.5.

Among the kept tokens, each layer from K on attends as the model would: its own mask at the kept columns (causal,
Gemma 3's bidirectional image blocks, sliding windows counted in original columns). While decoding, a sliding-window
layer's cache holds the last window - 1 shortened columns, a superset of the keys within the window (the kept columns
are a subset of the original ones), which the mask then restricts. Qwen3-VL's DeepStack features follow the kept
visual tokens.
"""

from __future__ import annotations

import torch
from torch import nn

from sinkflow.checks import number
from sinkflow.interventions.base import AttentionCall, AttentionIntervention, attention_rows
from sinkflow.models.build import decoder_layers, unwrap
from sinkflow.pathway import LlmColumns


class FastV(AttentionIntervention, name="fastv"):
    """From layer K on, only the most-attended visual tokens stay in the sequence."""

    def __init__(self, layer: int = 2, ratio: float = 0.5, keep_sinks: bool = False):
        super().__init__(layers=None, reference_depth=None)
        self.layer = number("intervention.layer", layer, integer=True, at_least=1)
        self.ratio = number("intervention.ratio", ratio, at_least=0, below=1)
        self.keep_sinks = keep_sinks
        self.needs_sinks = keep_sinks
        # while acting: per row, the original column of each column of the shortened rows, and which are tokens
        self.kept: torch.Tensor | None = None
        self.valid: torch.Tensor | None = None
        self.full_width = 0  # the columns of the forward that ranked (prompt, or prompt + generated without cache)
        self.kept_visual: torch.Tensor | None = None  # [B] visual tokens kept by the last ranking

    def attention_layers(self, depth: int) -> list[int]:
        if self.layer >= depth:
            raise ValueError(f"intervention.layer={self.layer}: FastV drops tokens after a layer of the LLM's {depth}")
        return [self.layer - 1]

    def hooks(self, model: nn.Module, columns: LlmColumns) -> list:
        layers = decoder_layers(model)
        handles = [
            layers[i].register_forward_pre_hook(self._shortening(i), with_kwargs=True)
            for i in range(self.layer, len(layers))
        ]
        decoder = unwrap(model).get_decoder()
        handles.append(decoder.norm.register_forward_hook(self._restoring))
        if hasattr(decoder, "_deepstack_process"):  # Qwen3-VL adds ViT features in its first layers
            handles.append(_Patched(decoder, "_deepstack_process", self._deepstack(decoder._deepstack_process)))
        return handles

    def visual_tokens(self, columns: LlmColumns) -> torch.Tensor:
        """The visual tokens each row kept after layer K (in its last ranking)."""
        if self.kept_visual is None or len(self.kept_visual) != len(columns.visual):
            return super().visual_tokens(columns)
        return self.kept_visual

    def forget(self) -> None:
        self.kept = self.valid = None
        self.full_width = 0

    def _deepstack(self, process):
        """Qwen3-VL's DeepStack step for shortened rows: the features of the kept visual tokens, at their new
        columns."""

        def shortened(hidden, visual_columns, features):
            if self.kept is not None and hidden.shape[1] == self.kept.shape[1] != visual_columns.shape[1]:
                kept = torch.zeros_like(visual_columns).scatter(1, self.kept, self.valid)
                features = features[kept[visual_columns]]
                visual_columns = _gather(visual_columns, self.kept, 1) & self.valid
            return process(hidden, visual_columns, features)

        return shortened

    def inspect(self, query, key, mask, scaling, call: AttentionCall) -> None:
        if int(call.queries[0]) != 0:
            return  # decoding: the prefill ranked already
        last = (self.columns.answer_start - 1).to(query.device)  # each row's last prompt token
        rows, which = last.unique(return_inverse=True)
        logits, _ = attention_rows(query, key, mask, scaling, call, rows)
        batch = torch.arange(query.shape[0], device=query.device)
        scores = torch.softmax(logits, dim=-1)[batch, :, which].mean(1)  # [B, K], averaged over heads
        self._rank(scores, call)

    def _rank(self, scores: torch.Tensor, call: AttentionCall) -> None:
        """The kept columns of each row: its tokens that are not visual (prompt and generated), and its top visual
        ones; left re-padded to the longest row."""
        width, counts = len(call.keys), []
        tokens = torch.nn.functional.pad(self.columns.tokens, (0, width - self.columns.tokens.shape[1]), value=True)
        kept = []
        for row in range(scores.shape[0]):
            visual = call.visual[row].nonzero().squeeze(1)
            priority = scores[row, visual].clone()
            if self.keep_sinks:
                priority[call.sinks[row, visual]] = float("inf")
            top = visual[priority.argsort(descending=True, stable=True)[: round(len(visual) * (1 - self.ratio))]]
            text = (tokens[row].to(visual.device) & ~call.visual[row]).nonzero().squeeze(1)
            kept.append(torch.cat([text, top]).sort().values)
            counts.append(len(top))
        self.kept_visual = torch.tensor(counts)
        length = max(len(columns) for columns in kept)
        self.kept = torch.zeros(len(kept), length, dtype=torch.long, device=scores.device)
        self.valid = torch.zeros(len(kept), length, dtype=torch.bool, device=scores.device)
        for row, columns in enumerate(kept):
            self.kept[row, length - len(columns) :], self.valid[row, length - len(columns) :] = columns, True
        self.full_width = width

    def _shortening(self, index: int):
        """A pre-hook on decoder layer `index` (>= K): in the forward that ranked, the rows shortened (hidden states
        at K, positions and mask at every layer); while decoding, the mask over the shortened cache."""

        def shorten(layer, args, kwargs):
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            ranked = self.kept is not None and hidden.shape[1] in (self.full_width, self.kept.shape[1])
            if ranked and hidden.shape[1] == self.full_width:  # layer K of the forward that ranked
                hidden = _gather(hidden, self.kept, 1) * self.valid[..., None].to(hidden.dtype)
            if ranked:
                for key in ("position_embeddings", "position_ids"):
                    value = kwargs.get(key)
                    if isinstance(value, tuple):
                        kwargs[key] = tuple(_gather(t, self.kept, -2) for t in value)
                    elif value is not None:
                        kwargs[key] = _gather(value, self.kept, -1)
                allowed = self._kept_mask(kwargs.get("attention_mask"))
            else:
                allowed = self._decoding_mask(layer, kwargs["past_key_values"].layers[index], hidden.shape[1])
            kwargs["attention_mask"] = _as_mask(allowed[:, None], layer, hidden.dtype)
            if "hidden_states" in kwargs:
                kwargs["hidden_states"] = hidden
                return args, kwargs
            return (hidden, *args[1:]), kwargs

        return shorten

    def _kept_mask(self, mask: torch.Tensor | None) -> torch.Tensor:
        """[B, L', L'] the keys each kept column may attend to: the layer's mask over the full rows (causal when the
        model passes none) at the kept rows and columns; padding columns attend to themselves (finite rows)."""
        if mask is None:
            allowed = self.kept[:, None, :] <= self.kept[:, :, None]
        else:
            full = (mask if mask.dtype == torch.bool else mask == 0)[:, 0].expand(len(self.kept), -1, -1)
            rows = _gather(full, self.kept, 1)  # [B, L', full width]
            allowed = _gather(rows.transpose(1, 2), self.kept, 1).transpose(1, 2)
        allowed = allowed & self.valid[:, None, :]
        return allowed | torch.eye(self.kept.shape[1], dtype=torch.bool, device=allowed.device)

    def _decoding_mask(self, layer: nn.Module, cached, queries: int) -> torch.Tensor:
        """[B, queries, keys] while decoding: the kept prompt columns, then every column generated since, as far as
        this layer's cache holds them (a sliding window's: its last window - 1, then the window in original columns)."""
        seen = cached.get_seq_length()  # every column this layer has taken, in the shortened rows
        held = cached.keys.shape[-2] if cached.is_initialized else 0
        generated = seen + queries - self.kept.shape[1]
        device = self.kept.device
        original = torch.cat(
            [self.kept, (self.full_width + torch.arange(generated, device=device)).expand(len(self.kept), -1)], 1
        )[:, -(held + queries) :]
        valid = torch.nn.functional.pad(self.valid, (0, generated), value=True)[:, -(held + queries) :]
        query, key = original[:, -queries:, None], original[:, None, :]
        allowed = valid[:, None, :] & (key <= query)
        window = getattr(layer.self_attn, "sliding_window", None)
        if window:
            allowed &= query - key < window
        return allowed

    def _restoring(self, norm, args, output):
        """The final norm's output of the shortened rows, back at their original columns (the forward that ranked:
        a forward over labels needs them there)."""
        if self.kept is None or output.shape[1] != self.kept.shape[1] or self.kept.shape[1] == self.full_width:
            return output
        restored = output.new_zeros(output.shape[0], self.full_width, output.shape[-1])
        index = self.kept[..., None].expand(-1, -1, output.shape[-1])
        return restored.scatter(1, index, output * self.valid[..., None].to(output.dtype))


class _Patched:
    """An instance attribute set for a while (removed like a hook)."""

    def __init__(self, owner: object, name: str, value: object):
        self.owner, self.name = owner, name
        setattr(owner, name, value)

    def remove(self) -> None:
        delattr(self.owner, self.name)


def _as_mask(allowed: torch.Tensor, layer: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """[B, 1, q, K] allowed keys as the layer's attention implementation takes its mask: boolean (SDPA), or additive
    (eager)."""
    if layer.self_attn.config._attn_implementation == "eager":
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
            ~allowed, torch.finfo(dtype).min
        )
    return allowed


def _gather(tensor: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
    """`tensor` [..., B or 1, C, ...] at the columns `index` [B, L'] of its sequence axis `dim` (the batch axis right
    before it; M-RoPE positions have one more axis in front)."""
    dim %= tensor.dim()
    if tensor.shape[dim - 1] == 1:  # positions shared by the batch: one row each now
        tensor = tensor.expand(*tensor.shape[: dim - 1], index.shape[0], *tensor.shape[dim:])
    view = [1] * (dim - 1) + list(index.shape) + [1] * (tensor.dim() - dim - 1)
    shape = [*tensor.shape[:dim], index.shape[1], *tensor.shape[dim + 1 :]]
    return tensor.gather(dim, index.view(view).expand(shape))
