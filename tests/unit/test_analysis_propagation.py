"""propagation and massive_dims statistics against brute force from `output_attentions` / `output_hidden_states`.

Both tiny families (LLaVA: Llama with 1-D RoPE; Qwen2-VL: M-RoPE, 2x2 merged tokens) with simulated sinks, on a
left-padded batch of three prompts of different lengths.
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from sinkflow.analysis import massive_dims, propagation
from sinkflow.analysis.context import AnalysisContext, visual_tokens
from sinkflow.analysis.massive_dims import MassiveCriterion
from sinkflow.analysis.propagation import average_ranks, query_inputs, summarise
from sinkflow.caption import Caption
from sinkflow.data.collate import Collator
from sinkflow.data.templates import ProcessorChatTemplate, VicunaV1
from sinkflow.models.build import load_pretrained
from sinkflow.models.families.gemma3 import Gemma3Family
from sinkflow.models.families.llava import LlavaFamily
from sinkflow.models.families.qwen2_vl import Qwen2VLFamily
from sinkflow.models.tiny_gemma3 import ensure_tiny_gemma3
from sinkflow.models.tiny_qwen import ensure_tiny_qwen
from sinkflow.module import SinkflowModule
from sinkflow.sinks.detectors.norm_threshold import NormThreshold
from sinkflow.sinks.simulated import SimulatedSinks
from sinkflow.sinks.strategies.none import NoneStrategy

CAPTION = Caption("tiny", "none", "norm_threshold tau=100", "shapes", True)  # what the figures are titled with
QUESTIONS = [
    "What is the background color?",
    "How many shapes are there in this picture? Count every one.",
    "Is there a red circle?",
]


@pytest.fixture(scope="module", params=["llava", "qwen2_vl", "gemma3"])
def family_case(request, tiny_checkpoint, shapes_root, tmp_path_factory):
    """(module with simulated sinks and a tau=100 detector, a left-padded generation batch). Gemma 3's tiny model has a
    sliding-window layer narrower than the prompts, so its queries do not see every earlier key."""
    if request.param == "llava":
        path, family, template = tiny_checkpoint, LlavaFamily(), VicunaV1()
    elif request.param == "qwen2_vl":
        path = ensure_tiny_qwen(tmp_path_factory.mktemp("qwen"), seed=3)
        family, template = Qwen2VLFamily(), ProcessorChatTemplate()
    else:
        path = ensure_tiny_gemma3(tmp_path_factory.mktemp("gemma3"), seed=3)
        family, template = Gemma3Family(), ProcessorChatTemplate()
    model, processor = load_pretrained(path, family=family)
    module = SinkflowModule(
        model.eval(),
        processor,
        family,
        NoneStrategy(),
        NormThreshold(tau=100.0),
        generation={"max_new_tokens": 6},
        simulated_sinks=SimulatedSinks(k=2, norm=150.0),
    ).eval()
    samples = [
        {
            "id": str(i),
            "image": str(shapes_root / "eval_images" / f"eval_{i:05d}.png"),
            "conversations": [{"from": "human", "value": "<image>\n" + q}],
        }
        for i, q in enumerate(QUESTIONS)
    ]
    batch = Collator(processor, template, generate=True)(samples)
    assert (batch["attention_mask"] == 0).any(), "the batch must exercise left padding"
    return module, batch


def eager_forward(module, inputs, **flags):
    """The reference: the same LLM inputs through eager attention with everything returned."""
    module.hf.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            return module.hf(**inputs, use_cache=False, **flags)
    finally:
        module.hf.set_attn_implementation("sdpa")


def settings(**overrides):
    base = {"queries": "generated", "max_new_tokens": 6, "layers": None, "bin_width": 5.0}
    return OmegaConf.create({**base, **overrides})


@pytest.mark.parametrize("queries,layers", [("generated", None), ("prompt", None), ("generated", [1, 2])])
def test_attention_received_equals_output_attentions(family_case, queries, layers):
    module, batch = family_case
    chosen = settings(queries=queries, layers=layers)
    with torch.no_grad():
        measured = propagation.measure(module, batch, chosen, MassiveCriterion())
        tokens = visual_tokens(module, batch)
        inputs, columns, real = query_inputs(module, tokens, queries, chosen.max_new_tokens)
    maps = eager_forward(module, inputs, output_attentions=True).attentions  # per layer [B, H, T, T]
    used = maps if layers is None else maps[slice(*layers)]
    mean_map = torch.stack(used).mean(dim=(0, 2))  # over layers and heads: [B, T, T]
    expected = []
    for image in range(len(tokens.rows)):
        row = int(tokens.rows[image])
        picked = [int(c) for c, ok in zip(columns[row], real[row]) if ok]
        received = mean_map[row, picked].mean(dim=0)  # mean over the row's queries: [T]
        expected.append(received[tokens.columns[image, tokens.valid[image]]])
    assert real.any(dim=1).all()
    assert measured["attention"].shape == (int(tokens.valid.sum()),)
    torch.testing.assert_close(measured["attention"], torch.cat(expected).float(), atol=1e-6, rtol=1e-5)
    if queries == "prompt":  # the queries are exactly the text after the image
        for image in range(len(tokens.rows)):
            row = int(tokens.rows[image])
            after = int(tokens.columns[image].max()) + 1
            assert [int(c) for c, ok in zip(columns[row], real[row]) if ok] == list(
                range(after, batch["input_ids"].shape[1])
            )


def massive_reference(hidden_states, tokens, criterion):
    """Brute force: visual-token states of every layer input, RMS-normalised, judged by the criterion."""
    states = torch.stack([h[tokens.rows[:, None], tokens.columns] for h in hidden_states[:-1]])  # [L, I, S, D]
    normalised = (states / states.pow(2).mean(dim=-1, keepdim=True).sqrt()).abs()
    judged = normalised[criterion.min_layer :]
    if criterion.dims is not None:
        judged = judged[..., criterion.dims]
    massive = (judged.amax(dim=-1) > criterion.tau).any(dim=0) & tokens.valid
    return normalised, massive


@pytest.mark.parametrize("dims", [None, [3, 7, 64]])
def test_massive_tokens_and_layer_profiles_equal_output_hidden_states(family_case, dims):
    module, batch = family_case
    with torch.no_grad():
        tokens = visual_tokens(module, batch)
    hidden = eager_forward(module, tokens.inputs, output_hidden_states=True).hidden_states
    # tau at the 80th percentile of the judged peaks, so that it splits the tokens and the comparison bites
    peaks, _ = massive_reference(hidden, tokens, MassiveCriterion(tau=1e9, min_layer=1, dims=dims))
    judged = peaks[1:] if dims is None else peaks[1:][..., dims]
    criterion = MassiveCriterion(tau=float(judged.amax(dim=(0, 3))[tokens.valid].quantile(0.8)), min_layer=1, dims=dims)
    with torch.no_grad():
        tokens, reducer = massive_dims.measure(module, batch, criterion)
    normalised, massive = massive_reference(hidden, tokens, criterion)
    assert torch.equal(reducer.massive, massive)
    assert 0 < int(massive.sum()) < int(tokens.valid.sum())
    sinks = tokens.sinks & tokens.valid
    for layer in range(normalised.shape[0]):
        torch.testing.assert_close(reducer.layer_sums[layer, 0], normalised[layer][sinks].sum(dim=0))
        torch.testing.assert_close(reducer.layer_sums[layer, 1], normalised[layer][tokens.valid & ~sinks].sum(dim=0))
    torch.testing.assert_close(reducer.profile, normalised[1:].sum(dim=0))


def test_emerged_sinks_in_propagation_are_massive_non_sinks(family_case):
    module, batch = family_case
    criterion = MassiveCriterion(tau=2.5, min_layer=1)
    with torch.no_grad():
        measured = propagation.measure(module, batch, settings(), criterion)
        tokens = visual_tokens(module, batch)
        inputs, _, _ = query_inputs(module, tokens, "generated", 6)
    _, massive = massive_reference(
        eager_forward(module, inputs, output_hidden_states=True).hidden_states, tokens, criterion
    )
    assert torch.equal(measured["emerged"], (massive & ~tokens.sinks)[tokens.valid])
    assert measured["emerged"].any()


def test_the_reported_vit_sinks_are_the_planted_ones(family_case):
    module, batch = family_case
    with torch.no_grad():
        tokens = visual_tokens(module, batch)
        measured = propagation.measure(module, batch, settings(), MassiveCriterion())
    assert torch.equal(tokens.sinks, tokens.planted)
    assert tokens.visual.planted.sum(dim=1).tolist() == [2, 2, 2] and bool(tokens.sinks.any(dim=1).all())
    assert torch.equal(measured["vit_sink"], measured["planted"])
    norms = tokens.norms[tokens.valid]
    assert torch.equal(measured["norms"], norms) and bool((norms[measured["vit_sink"]] >= 100).all())


def test_task_summaries_report_the_planted_sinks_and_the_brute_force_dims(family_case, tmp_path):
    module, batch = family_case
    criterion = {"tau": 2.5, "min_layer": 1, "dims": None}
    task_settings = {"propagation": {**settings(), "emerged": criterion}, "massive_dims": {**criterion, "top_k": 3}}
    summaries = {}
    for task, run in (("propagation", propagation.run), ("massive_dims", massive_dims.run)):
        ctx = AnalysisContext(
            module=module,
            batches=lambda: iter([batch]),
            settings=OmegaConf.create(task_settings[task]),
            output_dir=tmp_path,
            task=task,
            caption=CAPTION,
        )
        with torch.no_grad():
            summaries[task] = run(ctx)
        assert (tmp_path / f"{task}.json").exists() and (tmp_path / f"{task}.png").read_bytes()[:4] == b"\x89PNG"
    assert summaries["propagation"]["vit_sinks_equal_planted"] is True
    assert summaries["massive_dims"]["vit_sinks_equal_planted"] is True
    assert summaries["massive_dims"]["vit_sinks"] == int(visual_tokens(module, batch).planted.sum())
    with torch.no_grad():
        tokens, _ = massive_dims.measure(module, batch, MassiveCriterion(**criterion))
    hidden = eager_forward(module, tokens.inputs, output_hidden_states=True).hidden_states
    normalised, massive = massive_reference(hidden, tokens, MassiveCriterion(**criterion))
    sinks = tokens.sinks & tokens.valid
    for layer, reported in enumerate(summaries["massive_dims"]["per_layer"]):
        expected = torch.topk(normalised[layer][sinks].mean(dim=0), 3).indices.tolist()
        assert [d["dim"] for d in reported["vit_sinks"]] == expected
    judged = normalised[1:][:, tokens.valid]  # what tau is compared with: layers >= min_layer, every dim
    assert summaries["massive_dims"]["peak"] == pytest.approx(float(judged.max()))
    heatmap = summaries["massive_dims"]["heatmap"]  # what the figure draws: mean |h / rms(h)| per layer and dim
    for group, mask in (("vit_sinks", sinks), ("non_sinks", tokens.valid & ~sinks)):
        expected = normalised[:, mask][:, :, heatmap["dims"]].mean(dim=1)
        torch.testing.assert_close(torch.tensor(heatmap[group]), expected.float(), atol=1e-5, rtol=1e-5)
    assert summaries["propagation"]["caption"] == CAPTION.text(f"3 samples, {int(tokens.valid.sum())} visual tokens")
    emerged = massive & ~sinks
    profile = normalised[1:][:, emerged].mean(dim=(0, 1))
    assert summaries["massive_dims"]["groups"]["emerged"]["tokens"] == int(emerged.sum())
    assert summaries["massive_dims"]["emerged_dims"] == torch.topk(profile, 3).indices.tolist()


def test_summary_statistics_equal_a_direct_computation():
    generator = torch.Generator().manual_seed(0)
    norms = torch.cat([torch.rand(200, generator=generator) * 40, 100 + torch.rand(6, generator=generator) * 60])
    attention = torch.rand(206, generator=generator) * 0.01 + (norms > 100) * 0.02
    vit_sink = norms > 100
    emerged = torch.zeros(206, dtype=torch.bool)
    emerged[:3] = True
    summary = summarise(norms, attention, vit_sink, emerged, bin_width=5.0)
    non_sink = ~vit_sink & ~emerged
    for name, mask in (("non_sink", non_sink), ("vit_sink", vit_sink), ("emerged_sink", emerged)):
        entry = summary["mean_attention_percent"][name]
        assert entry["tokens"] == int(mask.sum())
        assert entry["mean_attention_percent"] == pytest.approx(100 * attention[mask].double().mean().item())
    for entry in summary["bins"]:
        inside = (norms >= entry["norm_from"]) & (norms < entry["norm_to"])
        assert entry["tokens"] == int(inside.sum()) > 0
        assert entry["mean_attention_percent"] == pytest.approx(100 * attention[inside].double().mean().item())
    assert sum(b["tokens"] for b in summary["bins"]) == 206
    x, y = norms.double().numpy(), attention.double().numpy()
    dx, dy = x - x.mean(), y - y.mean()
    pearson = (dx * dy).sum() / np.sqrt((dx**2).sum() * (dy**2).sum())
    assert summary["correlation"]["pearson"] == pytest.approx(pearson)
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))  # no ties in continuous draws
    n = len(x)
    spearman = 1 - 6 * ((rx - ry) ** 2).sum() / (n * (n**2 - 1))
    assert summary["correlation"]["spearman"] == pytest.approx(spearman)
    assert summary["vit_sink_over_non_sink"] == pytest.approx(
        attention[vit_sink].double().mean().item() / attention[non_sink].double().mean().item()
    )


def test_ties_share_their_mean_rank_and_bad_settings_are_named():
    assert average_ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [2.5, 0.0, 2.5, 1.0]
    with pytest.raises(ValueError, match="propagation.bin_width"):
        summarise(torch.ones(2), torch.ones(2), torch.zeros(2, dtype=torch.bool), torch.zeros(2, dtype=torch.bool), 0)
    with pytest.raises(ValueError, match="massive_dims.tau"):
        MassiveCriterion(tau=0)
    bad_queries = settings(queries="answer")
    message = r"^`propagation.queries` must be one of \('generated', 'prompt'\), got 'answer'$"
    with pytest.raises(ValueError, match=message):
        propagation.run(SimpleNamespace(settings=bad_queries))
    with pytest.raises(ValueError, match=message):  # the same check before anything loads
        propagation.preflight(bad_queries, n_layers=2)


def test_the_answer_forward_sees_the_positions_generate_used(family_case):
    """Re-running prompt + greedy answer in one forward predicts that same answer at every real answer token."""
    module, batch = family_case
    with torch.no_grad():
        tokens = visual_tokens(module, batch)
        inputs, columns, real = query_inputs(module, tokens, "generated", 6)
        logits = module.hf(**inputs, use_cache=False).logits
        tokenizer = module.processor.tokenizer
        answer = module.hf.generate(
            **dict(tokens.inputs),
            max_new_tokens=6,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    predicted = logits[:, columns[0] - 1].argmax(dim=-1)  # the token at column c is predicted at c - 1
    assert torch.equal(predicted[real], answer[:, -columns.shape[1] :][real])
