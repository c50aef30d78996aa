"""Word-distribution decoding of isolated visual tokens (docs/paper.md#what-sinks-encode).

Every projected visual token is run through the LLM alone, blocked from every other token: the sequence is that
single token (after the BOS embedding when `decode.bos` is on and the tokenizer has one), and the LM head reads
the vocabulary distribution at its position. All isolated tokens of a batch run together as a batch of length-1
(or length-2) sequences, which is the same computation as one sequence with every other token masked out.

Reported: the most frequent top-1 words of sinks and of non-sinks, and the "main-object rank": how often the
image's main-object word ranks first among the words of its label vocabulary. Each candidate word is compared by
the logit of its first token as the word appears inside text (after a space). On shapes the main object is the largest
shape (`decode.label: largest_shape`; the paper decodes "cat" / "person" on single-object photos), read from
`scenes.json` (`decode.scenes`); `background` or `dominant_color` ask for another global label.
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import torch

from sinkflow.analysis.context import AnalysisContext, image_names, visual_tokens
from sinkflow.analysis.scene_labels import by_file_name, check_target, read_scenes
from sinkflow.analysis.task import ANALYSES, Analysis
from sinkflow.plotting import pyplot, titled

plt = pyplot()
log = logging.getLogger(__name__)

KINDS = ("sink", "nonsink")


def isolated_logits(
    model, tokens: torch.Tensor, bos: torch.Tensor | None = None, chunk_size: int = 256
) -> torch.Tensor:
    """LM-head logits [n, V] of each token embedding [n, D] run through the LLM on its own (after `bos` [D])."""
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    out = []
    for chunk in tokens.split(chunk_size):
        embeds = chunk.unsqueeze(1)
        if bos is not None:
            embeds = torch.cat([bos.to(chunk.dtype).expand(len(chunk), 1, -1), embeds], dim=1)
        hidden = decoder(inputs_embeds=embeds, use_cache=False).last_hidden_state[:, -1]
        out.append(head(hidden).float())
    return torch.cat(out)


def first_token_ids(tokenizer, words: tuple[str, ...], key: str) -> torch.Tensor:
    """The first token id of each word as it appears inside text (after a space); the words must start differently.

    The in-text form is read off "a <word>" minus "a", which works for SentencePiece and byte-level BPE alike.
    """
    prefix = tokenizer("a", add_special_tokens=False)["input_ids"]
    ids = []
    for word in words:
        full = tokenizer(f"a {word}", add_special_tokens=False)["input_ids"]
        if full[: len(prefix)] != prefix or len(full) == len(prefix):
            raise ValueError(f"{key}: cannot isolate the tokens of {word!r} (they merge with the text before it)")
        ids.append(full[len(prefix)])
    clashes = {w: i for w, i in zip(words, ids) if ids.count(i) > 1}
    if clashes:
        raise ValueError(f"{key}: candidate words share a first token, so their rank is ambiguous: {clashes}")
    return torch.tensor(ids)


def main_object_hits(logits: torch.Tensor, candidates: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[n] bool: the target candidate (index into `candidates`) has the highest logit among the candidates.

    Ties count as a miss unless the target is the first of the tied candidates (argmax order).
    """
    return logits[:, candidates.to(logits.device)].argmax(dim=-1) == target.to(logits.device)


def top_words(tokenizer, logits: torch.Tensor, k: int) -> list[list[str]]:
    """The k most likely tokens of each row, as stripped text."""
    ids = logits.topk(k, dim=-1).indices.tolist()
    return [[tokenizer.decode([i]).strip() for i in row] for row in ids]


def rank1_rate(hits: list[torch.Tensor]) -> float:
    """Fraction of hits over all tokens of one kind (NaN when there were none)."""
    flat = torch.cat(hits) if hits else torch.zeros(0, dtype=torch.bool)
    return float(flat.double().mean()) if flat.numel() else float("nan")


def run(ctx: AnalysisContext) -> dict:
    """Top-k words and main-object rank of isolated sink and non-sink tokens."""
    settings, module = ctx.settings, ctx.module
    hf, tokenizer = module.hf, module.processor.tokenizer
    if settings.top_k < 1:
        raise ValueError(f"decode.top_k must be >= 1, got {settings.top_k}")
    scenes, target, candidates = None, None, None
    if settings.get("scenes"):
        scenes = by_file_name(read_scenes(settings.scenes, "decode.scenes"))
        target = check_target(settings.label, "decode.label")
        candidates = first_token_ids(tokenizer, target.vocabulary, "decode.label")
    bos = None
    if settings.bos:
        if tokenizer.bos_token_id is None:
            log.warning("decode.bos: the tokenizer has no BOS token; tokens are decoded without one")
        else:
            bos = hf.get_input_embeddings().weight[tokenizer.bos_token_id]
    seen: set[str] = set()
    words = {kind: Counter() for kind in KINDS}
    hits: dict[str, list[torch.Tensor]] = {kind: [] for kind in KINDS}
    unlabelled, examples = 0, []
    with torch.no_grad():
        for batch in ctx.batches():
            if len(seen) >= settings.max_images:
                break
            names = image_names(batch)
            new = []  # images not decoded yet (evaluation sets ask several questions about each image)
            for i, name in enumerate(names):
                if name not in seen and len(seen) < settings.max_images:
                    seen.add(name)
                    new.append(i)
            if not new:
                continue
            tokens = visual_tokens(module, batch)
            embeds = tokens.inputs["inputs_embeds"][tokens.rows[:, None], tokens.columns]  # [n_images, S, D]
            valid, sinks = tokens.valid[new], tokens.sinks[new]
            # Every new image's tokens at once, then split back per image.
            logits = isolated_logits(hf, embeds[new][valid], bos).split(valid.sum(dim=1).tolist())
            for i, image_logits, image_valid, image_sinks in zip(new, logits, valid, sinks):
                is_sink = image_sinks[image_valid].cpu()
                ranked = top_words(tokenizer, image_logits, settings.top_k)
                by_kind = {
                    "sink": [r for r, s in zip(ranked, is_sink.tolist()) if s],
                    "nonsink": [r for r, s in zip(ranked, is_sink.tolist()) if not s],
                }
                for kind in KINDS:
                    words[kind].update(r[0] for r in by_kind[kind])
                if len(examples) < 8:
                    examples.append({"image": names[i], **{kind: by_kind[kind][:3] for kind in KINDS}})
                if scenes is None:
                    continue
                label = target.read(scenes[names[i]]) if names[i] in scenes else None
                if label is None:
                    unlabelled += 1
                    continue
                hit = main_object_hits(image_logits, candidates, torch.tensor(target.vocabulary.index(label))).cpu()
                hits["sink"].append(hit[is_sink])
                hits["nonsink"].append(hit[~is_sink])
    if not seen:
        raise ValueError("decode: the dataset gave no images")
    summary = {
        "caption": ctx.figure_caption(f"{len(seen)} images"),
        "model": module.source,
        "images": len(seen),
        "bos": bos is not None,
        "top_k": settings.top_k,
        "tokens": {kind: sum(words[kind].values()) for kind in KINDS},
        "top1_words": {
            kind: [[w, n / max(sum(words[kind].values()), 1)] for w, n in words[kind].most_common(10)] for kind in KINDS
        },
        "examples": examples,
    }
    if scenes is not None:
        if unlabelled:
            log.warning(
                "decode: %d images have no %s label in %s and are not ranked",
                unlabelled,
                settings.label,
                settings.scenes,
            )
        summary["main_object"] = {
            "label": settings.label,
            "candidates": list(target.vocabulary),
            "rank1_rate": {kind: rank1_rate(hits[kind]) for kind in KINDS},
            "chance": 1 / len(target.vocabulary),
            "unlabelled": unlabelled,
        }
    return ctx.write(summary, {"decode": plot_decode(summary)})


def plot_decode(summary: dict) -> plt.Figure:
    """Top-1 word frequencies of sinks and non-sinks, and (with labels) the main-object rank-1 rates against chance,
    drawn from the summary alone."""
    ranked = "main_object" in summary
    fig, axes = plt.subplots(1, 3 if ranked else 2, figsize=(13 if ranked else 9, 4.5))
    for ax, kind, color in zip(axes, KINDS, ("tab:red", "tab:blue")):
        pairs = summary["top1_words"][kind][:8][::-1]
        ax.barh([repr(w) for w, _ in pairs], [f for _, f in pairs], color=color)
        ax.set_xlim(left=0)
        ax.set_xlabel("fraction of the tokens (0-1)")
        ax.set_ylabel("top-1 word")
        ax.set_title(f"{kind} tokens ({summary['tokens'][kind]})", fontsize=9)
    if ranked:
        main = summary["main_object"]
        rates = [np.nan_to_num(main["rank1_rate"][kind]) for kind in KINDS]
        axes[-1].bar(KINDS, rates, color=("tab:red", "tab:blue"))
        axes[-1].axhline(main["chance"], color="black", linestyle="--", label=f"chance = {main['chance']:.2f}")
        axes[-1].set_ylim(0, 1)
        axes[-1].set_xlabel("token type")
        axes[-1].set_ylabel(f"{main['label']} word ranked first (fraction, 0-1)")
        axes[-1].set_title("main-object rank", fontsize=9)
        axes[-1].legend()
    return titled(fig, "isolated visual tokens decoded through the LM head", summary["caption"])


ANALYSES.register("decode", Analysis(run))
