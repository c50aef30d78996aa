"""Interventions inside the LLM (sinkflow.interventions): each equals its paper's formula applied by hand to an
eager attention written here in plain torch (the model loaded with eager attention and with SDPA); `none` is the
model as loaded; generation with the KV cache equals generation without it; every intervention trains a step and
generates on every family; the columns the interventions read are where the visual tokens and the sinks are."""

import copy
import itertools

import pytest
import torch
from hydra.utils import instantiate
from transformers import AttentionInterface

from sinkflow.config import CONF_DIR, compose_config
from sinkflow.data.collate import Collator
from sinkflow.interventions.base import INTERVENTIONS
from sinkflow.interventions.var import massive_tokens
from sinkflow.models.build import decoder_layers
from sinkflow.models.families.base import FAMILIES
from sinkflow.sinks.strategies.none import NoneStrategy
from sinkflow.sinks.strategies.sink_front import SinkFront

QUESTIONS = ["What is the background color?", "How many shapes are there?", "Is there a red circle?"]
REFERENCE = "test_reference_attention"


@pytest.fixture(scope="module")
def images(resized_images):
    return resized_images([(64, 64), (48, 32), (32, 48)])


def samples(images, answer: bool) -> list[dict]:
    out = []
    for i, (image, question) in enumerate(zip(images, QUESTIONS)):
        turns = [{"from": "human", "value": f"<image>\n{question}"}]
        if answer:
            turns.append({"from": "gpt", "value": "two red circles"})
        out.append({"id": str(i), "image": image, "conversations": turns})
    return out


def intervention(name: str, *overrides: str):
    """`intervention=<name>` as train.py composes it."""
    return instantiate(compose_config([f"intervention={name}", *overrides]).intervention.intervention)


def assert_generates_alike(module, images) -> None:
    """Batched generation equals one sample at a time and generation without the KV cache (4 tokens)."""
    module.generation.max_new_tokens = 4
    collate = module.question_collator
    with torch.no_grad():
        batched = module.generate(collate(samples(images, answer=False)))
        alone = [module.generate(collate([item]))[0] for item in samples(images, answer=False)]
        generate = module.hf.generate
        module.hf.generate = lambda **inputs: generate(**inputs, use_cache=False)
        uncached = module.generate(collate(samples(images, answer=False)))
    assert batched == alone == uncached and all(batched)


# The papers' formulas, in plain torch, on one layer's pre-softmax logits z [B, H, T, T] of a full forward (query
# row t is column t, before the mask), given the rows' visual columns [B, T], answer starts [B] and image columns
# [B, T].
def pai_formula(z, visual, answer_start, image, sinks, alpha=0.2):
    rows = torch.arange(z.shape[2])[None, :] >= answer_start[:, None] - 1  # the rows producing answer tokens
    edit = rows[:, None, :, None] & visual[:, None, None, :]
    return torch.where(edit, z + alpha * z.abs(), z)


def vaf_formula(z, visual, answer_start, image, sinks, visual_scale=1.15, system_scale=0.95):
    columns = torch.arange(z.shape[-1])
    first = torch.stack([row.nonzero()[0, 0] for row in image])
    after = torch.stack([row.nonzero()[-1, 0] + 1 for row in image])
    rows = columns[None, :] >= after[:, None]  # the rows after the image
    scale = torch.ones(visual.shape)
    scale[visual] = visual_scale
    scale[columns[None, :] < first[:, None]] = system_scale  # the keys before the image
    return torch.where(rows[:, None, :, None], z * scale[:, None, None, :], z)


def var_formula(a, visual, answer_start, image, sinks, keep=0.6, max_share=0.5, min_mass=0.2):
    """Post-softmax weights a [B, H, T, T]; the sinks are the ViT sinks (sink_dims: null)."""
    after = torch.stack([row.nonzero()[-1, 0] + 1 for row in image])
    out = a.clone()
    for b, h, t in itertools.product(range(a.shape[0]), range(a.shape[1]), range(a.shape[2])):
        if t < after[b]:
            continue
        row, vis, sink = a[b, h, t], visual[b], sinks[b]
        others = vis & ~sink
        if (
            not (vis & sink).any()
            or row[vis].sum() < min_mass
            or row[vis & sink].sum() / (row[vis].sum() + 1e-6) > max_share
        ):
            continue
        budget = (1 - keep) * row[sink].sum()
        new = row.clone()
        new[sink] = keep * row[sink]
        new[others] = row[others] + budget * row[others] / row[others].sum()
        out[b, h, t] = new
    return out


# The tiny models' LLMs have no known sink dimensions (VAR takes the ViT sinks there) and 2 layers (FastV drops after
# the first).
TINY = {
    "var": ("intervention.intervention.sink_dims=null",),
    "fastv": ("intervention.intervention.layer=1",),
    "test_time_registers": ("intervention.intervention.neurons={0: [0, 1]}",),  # a random ViT has no outliers
}
# name -> (what the formula edits, the formula)
FORMULAS = {"pai": ("logits", pai_formula), "vaf": ("logits", vaf_formula), "var": ("weights", var_formula)}


def reference_attention(stage: str, formula, layers: set[int], columns):
    """Eager attention by hand, `formula` applied to the logits or weights (`stage`) of `layers`."""

    def attend(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        repeats = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(repeats, 1).float(), value.repeat_interleave(repeats, 1).float()
        z = query.float() @ key.transpose(-1, -2) * scaling
        edit = module.layer_idx in layers
        seen = (columns.visual, columns.answer_start, columns.image, columns.sinks)
        if edit and stage == "logits":
            z = formula(z, *seen)
        z = z + attention_mask  # eager's additive mask (0, or the dtype's minimum: padded rows stay finite)
        weights = torch.softmax(z, dim=-1)
        if edit and stage == "weights":
            weights = formula(weights, *seen)
        return (weights @ value).to(query.dtype).transpose(1, 2), weights

    return attend


@pytest.mark.parametrize("name", sorted(FORMULAS))
@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("answer", [False, True], ids=["prompt", "with_answer"])
def test_each_intervention_equals_its_formula_by_hand(name, implementation, answer, images, planted_family_module):
    module = planted_family_module("llava", 7, NoneStrategy()).eval()
    stage, formula = FORMULAS[name]
    module.intervention = intervention(name, *TINY.get(name, ()))
    module.hf.set_attn_implementation(implementation)
    batch = Collator(module.processor, module.question_collator.template, generate=not answer)(samples(images, answer))
    with torch.no_grad():
        seen = module.pathway(batch, padding_side="left" if not answer else "right")
        got = module.llm(seen).logits
        plain = module.hf(**seen.inputs).logits
        # The reference: the same model, eager, every LLM attention by hand, the formula in the intervention's layers.
        module.hf.set_attn_implementation("eager")
        layers = decoder_layers(module.hf)
        chosen = set(module.intervention.layer_indices(len(layers)))
        AttentionInterface.register(REFERENCE, reference_attention(stage, formula, chosen, seen.columns))
        for layer in layers:
            layer.self_attn.config = copy.copy(layer.self_attn.config)
            layer.self_attn.config._attn_implementation_internal = REFERENCE
        expected = module.hf(**seen.inputs).logits
    valid = seen.inputs["attention_mask"].bool()
    torch.testing.assert_close(got[valid], expected[valid], atol=2e-5, rtol=1e-4)
    assert (got[valid] - plain[valid]).abs().max() > 1e-3, "the intervention must change the model's output"


@pytest.mark.parametrize("name", INTERVENTIONS.names())
@pytest.mark.parametrize("family_name", FAMILIES.names())
def test_every_intervention_trains_and_generates_on_every_family(name, family_name, images, planted_family_module):
    """A training step (finite loss, gradients reach the projector) and batched generation equal to one sample at a
    time, with the KV cache equal to without it, with sinks moved to the front (the columns follow the routing)."""
    module = planted_family_module(family_name, 4, SinkFront())
    module.intervention = intervention(name, *TINY.get(name, ()))
    module.intervention.setup(module.hf)
    template = module.question_collator.template
    loss = module(Collator(module.processor, template)(samples(images, answer=True))).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert any(p.grad is not None for p in module.family.projector(module.hf).parameters())
    module.eval()
    assert_generates_alike(module, images)


@pytest.mark.parametrize("family_name", FAMILIES.names())
def test_the_columns_hold_the_visual_tokens_and_the_sinks_where_the_routing_put_them(
    family_name, images, planted_family_module
):
    """The sink columns hold the planted sinks' tokens (sent to the front of each image block), the visual columns
    every routed visual token, and the answer starts where the labels do."""
    module = planted_family_module(family_name, 4, SinkFront()).eval()
    batch = Collator(module.processor, module.question_collator.template)(samples(images, answer=True))
    with torch.no_grad():
        seen = module.pathway(batch)
    columns, embeds = seen.columns, seen.inputs["inputs_embeds"]
    routed = torch.cat(seen.routed.tokens).to(embeds.dtype)
    assert int(columns.visual.sum()) == len(routed)
    torch.testing.assert_close(embeds[columns.visual], routed)  # every routed token, in order
    sink_tokens = torch.cat([t[: int(s.sum())] for t, s in zip(seen.routed.tokens, seen.sinks)]).to(embeds.dtype)
    torch.testing.assert_close(embeds[columns.sinks], sink_tokens)  # the front of each block: its sinks
    assert int(columns.sinks.sum()) == int(seen.sinks.sum()) > 0
    first_answer = (seen.inputs["labels"] != -100).long().argmax(1)
    assert columns.answer_start.tolist() == first_answer.tolist()


def test_none_changes_nothing_and_the_configs_match_the_registry(images, planted_family_module):
    assert sorted(path.stem for path in (CONF_DIR / "intervention").glob("*.yaml")) == INTERVENTIONS.names()
    module = planted_family_module("llava", 7, NoneStrategy()).eval()
    batch = Collator(module.processor, module.question_collator.template)(samples(images, answer=True))
    with torch.no_grad():
        seen = module.pathway(batch)
        torch.testing.assert_close(module.llm(seen).logits, module.hf(**seen.inputs).logits, atol=0, rtol=0)
    with pytest.raises(ValueError, match=r"intervention.layers \[40\] outside \[0, 32\)"):
        intervention("pai", "intervention.intervention.layers=[40]").layer_indices(4)


def test_var_finds_the_llm_sinks_on_its_dimensions_over_the_prompt(images, planted_family_module):
    hidden = torch.ones(1, 4, 8)
    hidden[0, 2, 5] = 100.0  # RMS ~ 35.4: |x / rms| ~ 2.8 on dim 5
    assert massive_tokens(hidden, [5], 2.5).tolist() == [[False, False, True, False]]
    assert massive_tokens(hidden, [4], 2.5).tolist() == [[False, False, False, False]]
    module = planted_family_module("llava", 4, NoneStrategy()).eval()
    module.intervention = intervention(
        "var", "intervention.intervention.sink_dims=[3,7]", "intervention.intervention.tau=2.0"
    )
    module.generation.max_new_tokens = 4
    found = []
    finding = module.intervention._finding
    module.intervention._finding = lambda index, columns: (found.append(index), finding(index, columns))[1]
    with torch.no_grad():
        batched = module.generate(module.question_collator(samples(images, answer=False)))
        generate = module.hf.generate
        module.hf.generate = lambda **inputs: generate(**inputs, use_cache=False)
        uncached = module.generate(module.question_collator(samples(images, answer=False)))
    assert batched == uncached and found  # the sinks found over the prompt serve every decoding step
    module.intervention = intervention("var")
    with pytest.raises(ValueError, match=r"intervention.sink_dims \[1415, 2533\] outside the LLM's"):
        module.generate(module.question_collator(samples(images, answer=False)))


def lsg_formula_layers(module, seen, gate_layer: int):
    """LSG by hand: the gate on the plain model's state after `gate_layer` at each row's last prompt token gives
    (rho_sinks, rho_rest); layer `gate_layer + 1` then attends with the visual keys scaled by their group's rho."""
    with torch.no_grad():
        states = module.hf(**seen.inputs, output_hidden_states=True).hidden_states[gate_layer + 1]
    columns = seen.columns
    last = columns.answer_start - 1
    gate = module.intervention.gates[str(gate_layer)]
    mlp = gate.mlp
    hidden = states[torch.arange(len(last)), last].float()
    normed = torch.nn.functional.layer_norm(hidden, hidden.shape[-1:], gate.norm.weight, gate.norm.bias)
    rho = torch.softmax(mlp[2](torch.nn.functional.gelu(mlp[0](normed))), -1)
    scale = torch.ones(columns.visual.shape)
    scale = torch.where(columns.visual & columns.sinks, rho[:, :1], torch.where(columns.visual, rho[:, 1:], scale))

    def formula(z, visual, answer_start, image, sinks):
        return z * scale[:, None, None, :]

    return formula


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("answer", [False, True], ids=["prompt", "with_answer"])
def test_lsg_scales_the_next_layers_visual_keys_by_its_gate(implementation, answer, images, planted_family_module):
    module = planted_family_module("llava", 7, NoneStrategy()).eval()
    module.intervention = intervention(
        "lsg", "intervention.intervention.layers=[0]", "intervention.intervention.reference_depth=null"
    )
    module.intervention.setup(module.hf)
    torch.manual_seed(0)
    torch.nn.init.normal_(module.intervention.gates["0"].mlp[2].weight, std=0.5)  # rho differs per row
    module.hf.set_attn_implementation(implementation)
    batch = Collator(module.processor, module.question_collator.template, generate=not answer)(samples(images, answer))
    with torch.no_grad():
        seen = module.pathway(batch, padding_side="left" if not answer else "right")
        got = module.llm(seen).logits
        formula = lsg_formula_layers(module, seen, 0)
        module.hf.set_attn_implementation("eager")
        AttentionInterface.register(REFERENCE, reference_attention("logits", formula, {1}, seen.columns))
        for layer in decoder_layers(module.hf):
            layer.self_attn.config = copy.copy(layer.self_attn.config)
            layer.self_attn.config._attn_implementation_internal = REFERENCE
        expected = module.hf(**seen.inputs).logits
    valid = seen.inputs["attention_mask"].bool()
    torch.testing.assert_close(got[valid], expected[valid], atol=2e-5, rtol=1e-4)


def test_lsg_gates_train_alone_and_travel_in_the_export(tmp_path, images, planted_family_module):
    from sinkflow.models.export import Export, export_trainable

    module = planted_family_module("llava", 7, NoneStrategy())
    for p in module.hf.parameters():
        p.requires_grad_(False)  # the frozen model the paper trains the gates on
    module.intervention = intervention("lsg")
    module.intervention.setup(module.hf)
    gates = list(module.intervention.parameters())
    assert gates and [g["name"] for g in module.parameter_groups()] == ["strategy"]
    before = [p.detach().clone() for p in gates]
    optimizer = torch.optim.AdamW(module.parameter_groups(), lr=1e-2)
    module.train()
    module(Collator(module.processor, module.question_collator.template)(samples(images, answer=True))).loss.backward()
    optimizer.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, gates)), "the gates must train"
    module.run_config = {}
    export = Export.read(export_trainable(module, tmp_path / "export"))
    fresh = intervention("lsg")
    fresh.setup(module.hf)
    export.apply_intervention(fresh, required=True)
    for (name, a), b in zip(module.intervention.state_dict().items(), fresh.state_dict().values()):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=name)
    (export.path / "intervention.safetensors").unlink()
    with pytest.raises(ValueError, match="no intervention.safetensors for intervention Lsg"):
        export.apply_intervention(fresh, required=True)
    export.apply_intervention(fresh, required=False)  # a run starting from it trains them


def fastv_kept_by_hand(attentions, columns, mask, row: int, ratio: float = 0.5) -> torch.Tensor:
    """FastV's kept columns of `row`, by hand: the last prompt token's attention at layer K - 1 (eager weights
    [B, H, T, T], averaged over heads) ranks the visual tokens; the top (1 - ratio) and every text token stay."""
    scores = attentions[row, :, -1].mean(0)
    visual = columns.visual[row].nonzero().squeeze(1)
    top = visual[scores[visual].argsort(descending=True, stable=True)[: round(len(visual) * (1 - ratio))]]
    text = (mask[row].bool() & ~columns.visual[row]).nonzero().squeeze(1)
    return torch.cat([text, top]).sort().values


def test_fastv_equals_the_forward_recomputed_on_the_kept_tokens_from_layer_k(images, planted_family_module):
    """The reference by hand: layer K - 1's attention of the last prompt token (eager, averaged over heads) ranks each
    row's visual tokens; the top half and every text token go on alone through layer K at their original
    positions, then the final norm and the head."""
    module = planted_family_module("llava", 7, NoneStrategy()).eval()
    module.intervention = intervention("fastv", "intervention.intervention.layer=1")
    module.hf.set_attn_implementation("eager")
    with torch.no_grad():
        seen = module.pathway(module.question_collator(samples(images, answer=False)), padding_side="left")
        got = module.llm(seen).logits[:, -1]
        out = module.hf(**seen.inputs, output_attentions=True, output_hidden_states=True)
        decoder, mask = module.hf.get_decoder(), seen.inputs["attention_mask"]
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        for row in range(len(mask)):
            kept = fastv_kept_by_hand(out.attentions[0], seen.columns, mask, row)
            hidden = out.hidden_states[1][row, kept][None]
            n = len(kept)
            causal = torch.full((n, n), torch.finfo(hidden.dtype).min).triu(1)[None, None]
            hidden = decoder.layers[1](
                hidden,
                attention_mask=causal,
                position_embeddings=decoder.rotary_emb(hidden, positions[row, kept][None]),
                position_ids=positions[row, kept][None],
            )
            expected = module.hf.lm_head(decoder.norm(hidden))[0, -1]
            torch.testing.assert_close(got[row], expected, atol=2e-5, rtol=1e-4)


def test_fastv_on_a_sliding_window_layer_equals_the_model_on_the_kept_tokens(images, planted_family_module):
    """Gemma 3 with a sliding-window layer after K (window 24, shorter than every prompt): the reference recomputes
    the layers from K on the kept tokens under the model's own masks (the window counted in original columns, the
    image blocks bidirectional) at the kept columns; generation through the shortened sliding cache equals generation
    without cache and one sample at a time."""
    module = planted_family_module("gemma3", 4, NoneStrategy(), text_layers=3).eval()
    layers = decoder_layers(module.hf)
    assert [layer.self_attn.sliding_window for layer in layers] == [24, 24, None]
    module.intervention = intervention("fastv", "intervention.intervention.layer=1")
    module.hf.set_attn_implementation("eager")
    seen_kwargs = {}
    hooks = [
        layer.register_forward_pre_hook(lambda m, a, kw, i=i: seen_kwargs.__setitem__(i, kw), with_kwargs=True)
        for i, layer in enumerate(layers)
    ]
    with torch.no_grad():
        seen = module.pathway(module.question_collator(samples(images, answer=False)), padding_side="left")
        got = module.llm(seen).logits[:, -1]
        out = module.hf(**seen.inputs, output_attentions=True, output_hidden_states=True)
        for hook in hooks:
            hook.remove()
        decoder, mask = module.hf.get_decoder(), seen.inputs["attention_mask"]
        assert int(mask.sum(1).min()) > 24  # the window binds in every row
        for row in range(len(mask)):
            kept = fastv_kept_by_hand(out.attentions[0], seen.columns, mask, row)
            hidden = out.hidden_states[1][row, kept][None]
            for index in (1, 2):
                kwargs = seen_kwargs[index]
                hidden = layers[index](
                    hidden,
                    attention_mask=kwargs["attention_mask"][row : row + 1][:, :, kept][:, :, :, kept],
                    position_embeddings=tuple(
                        t.expand(len(mask), -1, -1)[row : row + 1, kept] for t in kwargs["position_embeddings"]
                    ),
                    position_ids=kwargs["position_ids"][:, kept],
                )
            expected = module.hf.lm_head(decoder.norm(hidden))[0, -1]
            torch.testing.assert_close(got[row], expected, atol=2e-5, rtol=1e-4)
    assert_generates_alike(module, images)


@pytest.mark.parametrize("keep_sinks", [False, True])
def test_fastv_keeps_each_rows_budget_and_with_keep_sinks_the_sinks(keep_sinks, images, planted_family_module):
    module = planted_family_module("llava", 7, NoneStrategy()).eval()
    module.intervention = intervention(
        "fastv",
        "intervention.intervention.layer=1",
        "intervention.intervention.ratio=0.75",
        f"intervention.intervention.keep_sinks={keep_sinks}",
    )
    ranked = []
    rank = module.intervention._rank
    module.intervention._rank = lambda scores, call: (rank(scores, call), ranked.append(module.intervention.kept))
    with torch.no_grad():
        seen = module.pathway(module.question_collator(samples(images, answer=False)), padding_side="left")
        module.llm(seen)
    (kept,) = ranked
    columns = seen.columns
    for row in range(len(kept)):
        n_visual = int(columns.visual[row].sum())
        kept_visual = [int(c) for c in kept[row] if columns.visual[row, c]]
        assert len(kept_visual) == round(n_visual * 0.25)
        sinks = columns.sinks[row].nonzero().squeeze(1).tolist()
        assert set(sinks) <= set(kept_visual) or not keep_sinks
    assert kept.shape[1] < columns.visual.shape[1]  # the rows after layer K are shorter


def plant_register_neuron(model, family, patch: int, neuron: int) -> None:
    """Make MLP neuron `neuron` of the tiny CLIP's first layer write a high-norm outlier into patch `patch`: its
    input row reads a direction added to that patch's position embedding, its output column writes a large vector."""
    inner = getattr(family.vision_tower(model), "vision_model", family.vision_tower(model))
    positions, mlp = inner.embeddings.position_embedding.weight, inner.encoder.layers[0].mlp
    generator = torch.Generator().manual_seed(0)
    direction = torch.randn(positions.shape[1], generator=generator)
    direction /= direction.norm()
    written = torch.randn(positions.shape[1], generator=generator)
    with torch.no_grad():
        positions[1 + patch] += 8 * direction * positions.norm(dim=1).mean()
        mlp.fc1.weight[neuron] = 3.0 * (direction - direction.mean())
        mlp.fc1.bias[neuron] = -2.0
        mlp.fc2.weight[:, neuron] = 60 * written / written.norm()


def test_test_time_registers_move_the_planted_outlier_into_the_extra_token(images, tiny_family):
    from sinkflow.sinks.detectors.norm_threshold import NormThreshold

    model, processor, family, template = tiny_family("llava", 3)
    plant_register_neuron(model, family, patch=5, neuron=3)
    batch = Collator(processor, template)(samples(images, answer=True))
    registers = intervention(
        "test_time_registers", "intervention.intervention.threshold=100", "intervention.intervention.top_k=1"
    )
    detector = NormThreshold(tau=100.0)
    with torch.no_grad():
        before = family.encode(model, batch)
        with registers.encoding(model, family):
            after = family.encode(model, batch)
    assert registers.neurons == {0: [3]}  # found on the batch: the planted neuron
    assert after.features.shape == before.features.shape  # the extra token never reaches the projector
    sinks_before = detector(before.features, before.lengths)
    assert sinks_before[:, 5].all()  # the planted outlier in every image (and where else the neuron fires)
    assert not detector(after.features, after.lengths).any()  # gone at the source
    assert (after.features.norm(dim=-1) < 100).all()
    assert (registers.register_norms > 100).all()  # the extra token took it
    strict = intervention("test_time_registers", "intervention.intervention.threshold=1000")
    with (
        pytest.raises(ValueError, match="no token's norm after ViT layer -1 exceeds intervention.threshold=1000"),
        torch.no_grad(),
        strict.encoding(model, family),
    ):
        family.encode(model, batch)


def test_test_time_registers_on_a_packed_tower_equal_each_image_alone_with_its_extra_token_by_hand(images, tiny_family):
    """Qwen2-VL's packed ViT: the reference runs each image alone through the blocks with one zero token appended
    (identity rotary position, in the image's attention segment) and the move applied by hand to the register
    neurons (the patches' activation 0, the extra token's the image's signed peak); the packed outputs and the
    extra tokens' final norms are the same."""
    model, processor, family, template = tiny_family("qwen2_vl", 3)
    batch = Collator(processor, template)(samples(images, answer=True))
    tower = family.vision_tower(model)
    neurons = {0: [1, 5], 2: [3]}
    registers = intervention("test_time_registers", "intervention.intervention.neurons={0: [1, 5], 2: [3]}")
    pixels, grid = batch["pixel_values"], batch["image_grid_thw"]
    captured = {}
    hook = tower.blocks[0].register_forward_pre_hook(lambda m, a, kw: captured.update(kw), with_kwargs=True)
    with torch.no_grad():
        plain = tower(pixels, grid_thw=grid).last_hidden_state
        hook.remove()
        with registers.encoding(model, family):
            got = tower(pixels, grid_thw=grid).last_hidden_state
        embedded = tower.patch_embed(pixels)
        cos, sin = captured["position_embeddings"]
        edits = []

        def move_by_hand(module, args, layer):
            act = args[0].clone()
            chosen = neurons.get(layer, [])
            if chosen:
                values = act[:, chosen].flatten()
                peak = values[values.abs().argmax()]
                act[:-1, chosen] = 0.0
                act[-1, chosen] = peak
            return (act,)

        for layer, block in enumerate(tower.blocks):
            edits.append(block.mlp.fc2.register_forward_pre_hook(lambda m, a, i=layer: move_by_hand(m, a, i)))
        start, expected, norms = 0, [], []
        for length in grid.prod(-1).tolist():
            rows = slice(start, start + length)
            hidden = torch.cat([embedded[rows], embedded.new_zeros(1, embedded.shape[1])])
            rotary = (
                torch.cat([cos[rows], cos.new_ones(1, cos.shape[1])]),
                torch.cat([sin[rows], sin.new_zeros(1, sin.shape[1])]),
            )
            for block in tower.blocks:
                hidden = block(
                    hidden,
                    cu_seqlens=torch.tensor([0, length + 1], dtype=torch.int32),
                    position_embeddings=rotary,
                )
            expected.append(hidden[:-1])
            norms.append(hidden[-1].norm())
            start += length
        for edit in edits:
            edit.remove()
    torch.testing.assert_close(got, torch.cat(expected), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(registers.register_norms, torch.stack(norms), atol=1e-5, rtol=1e-5)
    assert (got - plain).abs().max() > 1e-3, "the intervention must change the ViT's output"


def test_test_time_registers_in_window_blocks_are_segments_of_their_own(images, tiny_family):
    """Qwen2.5-VL's window blocks split each image into windows: the extra token follows its image's last window as
    a segment of its own; in the full-attention blocks it closes its image's segment."""
    model, processor, family, template = tiny_family("qwen2_5_vl", 3)
    batch = Collator(processor, template)(samples(images[:2], answer=True))
    tower = family.vision_tower(model)
    registers = intervention("test_time_registers", "intervention.intervention.neurons={0: [1]}")
    seen = []
    with torch.no_grad(), registers.encoding(model, family):  # after the intervention's hooks: what the blocks get
        hooks = [
            block.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["cu_seqlens"].tolist()), with_kwargs=True)
            for block in tower.blocks
        ]
        family.encode(model, batch)
    for hook in hooks:
        hook.remove()
    lengths = batch["image_grid_thw"].prod(-1).tolist()
    assert lengths == [64, 24]  # 16-patch windows: 4 in the first image, 2 in the second (16 + 8)
    window = [0, 16, 32, 48, 64, 65, 81, 89, 90]  # 4 windows, extra token, 2 windows (+1), extra token
    full = [0, 65, 90]
    assert seen == [window if i not in tower.fullatt_block_indexes else full for i in range(len(tower.blocks))]


def test_test_time_registers_on_clip_equal_the_official_move_by_hand(images, tiny_family):
    """LLaVA's CLIP: the reference appends a zero token to the embedded sequence (before the pre-norm, as the
    official code), runs the encoder layers, and moves the register neurons' activation by hand: the patches' 0, the
    CLS token's untouched, the extra token's the image's signed peak over every token."""
    model, processor, family, template = tiny_family("llava", 3)
    batch = Collator(processor, template)(samples(images, answer=True))
    inner = family.vision_tower(model)  # CLIPVisionModel: embeddings, pre-norm, encoder
    neurons = {0: [1, 5], 1: [3]}
    registers = intervention("test_time_registers", "intervention.intervention.neurons={0: [1, 5], 1: [3]}")
    got = []
    with torch.no_grad():
        embedded = inner.pre_layrnorm(inner.embeddings(batch["pixel_values"]))
        with registers.encoding(model, family):
            hook = inner.encoder.layers[-1].register_forward_hook(lambda m, a, out: got.append(out))
            family.encode(model, batch)
            hook.remove()

        def move_by_hand(module, args, layer):
            act = args[0].clone()
            chosen = neurons.get(layer, [])
            if chosen:
                for image in range(len(act)):
                    values = act[image][:, chosen].flatten()
                    peak = values[values.abs().argmax()]
                    act[image, 1:-1, chosen] = 0.0  # the patches; the CLS token (0) keeps its own
                    act[image, -1, chosen] = peak
            return (act,)

        edits = [
            layer.mlp.fc2.register_forward_pre_hook(lambda m, a, i=i: move_by_hand(m, a, i))
            for i, layer in enumerate(inner.encoder.layers)
        ]
        hidden = torch.cat([embedded, inner.pre_layrnorm(embedded.new_zeros(len(embedded), 1, embedded.shape[-1]))], 1)
        for layer in inner.encoder.layers:
            hidden = layer(hidden, None)
        for edit in edits:
            edit.remove()
    torch.testing.assert_close(got[0], hidden, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(registers.register_norms, hidden[:, -1].norm(dim=-1), atol=1e-5, rtol=1e-5)
