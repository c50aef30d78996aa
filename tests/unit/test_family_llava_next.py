"""LLaVA-NeXT and LLaVA-OneVision through sinkflow's pathway: AnyRes tiles and newline tokens against plain
transformers, whose own packing (`pack_image_features`) says where every patch and newline goes."""

import re

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

from sinkflow.analysis import relevance
from sinkflow.analysis.context import visual_tokens
from sinkflow.analysis.propagation import query_inputs
from sinkflow.config import compose_config
from sinkflow.data.collate import Collator
from sinkflow.data.templates import ChatML, ProcessorChatTemplate
from sinkflow.models.build import load_pretrained
from sinkflow.models.families.llava_next import LlavaNextFamily
from sinkflow.models.families.llava_onevision import LlavaOnevisionFamily
from sinkflow.models.tiny_llava_next import ensure_tiny_anyres
from sinkflow.module import SinkflowModule
from sinkflow.sinks.strategies.drop_sinks import DropSinks
from sinkflow.sinks.strategies.none import NoneStrategy
from sinkflow.sinks.strategies.sink_front import SinkFront
from sinkflow.sinks.strategies.sinks_only import SinksOnly
from test_multi_image import TWO, hf_processor, reference_prompt

FAMILIES = {"llava_next": LlavaNextFamily, "llava_onevision": LlavaOnevisionFamily}
K = 2  # TopK sinks per ViT tile


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def pair(request, tmp_path_factory, loaded_pair):
    """A tiny checkpoint loaded through sinkflow (with its family) and through plain transformers. Of the two_sizes
    images, 64 x 64 is a base view + 2 x 2 tiles and 48 x 32 a base view + 1 x 2 tiles (a quarter of the grid
    padding)."""
    path = ensure_tiny_anyres(tmp_path_factory.mktemp("anyres"), variant=request.param, seed=2)
    return loaded_pair(path, FAMILIES[request.param]())


def transformers_packing(reference, batch):
    """Per image: transformers' LLM tokens of the image [block, D] (newlines included), the patch row each came from
    (-1 for a newline; rows tile by tile, the base view first, raster within a tile) as transformers' own
    `pack_image_features` packs an index, and the projector-input features of every tile's patches [rows, D]."""
    config, vision = reference.config, reference.config.vision_config
    per_tile = (vision.image_size // vision.patch_size) ** 2
    sizes = batch["image_sizes"]
    counts = [image_size_to_num_patches(size, config.image_grid_pinpoints, vision.image_size) for size in sizes]
    options = (
        {"vision_feature_select_strategy": "default"}
        if config.model_type == "llava_next"
        else {"vision_aspect_ratio": config.vision_aspect_ratio}
    )
    rows = [torch.arange(n * per_tile, dtype=torch.float32).view(n, per_tile, 1) for n in counts]
    with torch.no_grad():
        tokens = reference.model.get_image_features(batch["pixel_values"], sizes).pooler_output
        packed, _ = reference.model.pack_image_features(
            image_features=rows, image_sizes=sizes, image_newline=torch.tensor([-1.0]), **options
        )
        tiles = torch.cat([pixels[:n] for pixels, n in zip(batch["pixel_values"], counts)])
        hidden = reference.model.vision_tower(tiles, output_hidden_states=True).hidden_states
    features = hidden[config.vision_feature_layer]
    if config.vision_feature_select_strategy == "default":
        features = features[:, 1:]  # CLIP's CLS
    return (
        list(tokens),
        [p[:, 0].long() for p in packed],
        list(features.flatten(0, 1).split([per_tile * n for n in counts])),
    )


def sink_rows(features: torch.Tensor, rows: torch.Tensor, per_tile: int, k: int = K) -> torch.Tensor:
    """The `k` highest-norm patch rows of every tile, among the image's visible rows (a padding patch of the grid is
    no token, so never a sink)."""
    norms, tiles = features[rows].norm(dim=-1), rows // per_tile
    return torch.cat([rows[tiles == t][norms[tiles == t].topk(k).indices] for t in tiles.unique()])


def tile_grid(reference) -> tuple[int, int]:
    """(patches per tile side, patch size in px)."""
    vision = reference.config.vision_config
    return vision.image_size // vision.patch_size, vision.patch_size


def test_none_equals_transformers_logits_and_generation(pair, two_sizes, assert_parity, monkeypatch, question_batch):
    module, reference = pair
    batch = question_batch(module, two_sizes)
    expected = hf_processor(reference, module.processor, monkeypatch)(
        images=[Image.open(p).convert("RGB") for p in two_sizes],
        text=[meta["prompt"] for meta in batch["meta"]],
        return_tensors="pt",
        padding=True,
        padding_side="left",
    )
    for key in expected:
        assert torch.equal(batch[key], expected[key]), key
    # 64 x 64: 16 base-view tokens, 8 x 8 grid tokens, 8 newlines; 48 x 32: 16, 4 x 6 (unpadded), 4.
    assert (batch["input_ids"] == reference.config.image_token_id).sum(dim=1).tolist() == [88, 44]
    assert (batch["attention_mask"] == 0).any(), "the batch must exercise padding"
    with torch.no_grad():
        visual = module.visual(batch)
    assert visual.lengths == [80, 40] and [int((~layout).sum()) for layout in visual.layouts] == [8, 4]
    assert [ids.unique().tolist() for ids in visual.tiles] == [[0, 1, 2, 3, 4], [0, 1, 2]]
    assert_parity(module, reference, batch, dict(expected))


def test_features_and_pixels_are_the_patches_transformers_packs_in_its_order(pair, two_sizes, question_batch):
    """Each feature is the projector input of the patch transformers puts in that slot; its tile and pixels match."""
    module, reference = pair
    batch = question_batch(module, two_sizes)
    _, packed, features = transformers_packing(reference, batch)
    with torch.no_grad():
        visual = module.family.encode(module.hf, batch)
    pixels = module.family.patch_pixels(batch, visual)
    side, patch = tile_grid(reference)
    for i, ids in enumerate(packed):
        rows = ids[ids >= 0]
        assert torch.equal(visual.layouts[i], ids >= 0)
        torch.testing.assert_close(visual.features[i, : len(rows)], features[i][rows], atol=1e-6, rtol=0)
        assert torch.equal(visual.tiles[i], rows // side**2)
        for slot, row in enumerate(rows.tolist()):
            tile, cell = divmod(row, side**2)
            r, c = divmod(cell, side)
            expected = batch["pixel_values"][i, tile, :, r * patch : (r + 1) * patch, c * patch : (c + 1) * patch]
            assert torch.equal(pixels[i, slot], expected.flatten())


@pytest.mark.parametrize("position_mode", ["contiguous", "original"])
def test_sink_front_equals_transformers_fed_the_permuted_tokens_newlines_in_place(
    pair, two_sizes, position_mode, question_batch, rerouted
):
    """TopK sinks per tile moved to the front of the image's visual slots; newlines keep their slots (and, with
    `original`, every token its position)."""
    module, reference = pair
    batch = question_batch(module, two_sizes)
    with torch.no_grad():
        ours = rerouted(module, SinkFront(position_ids=position_mode), K)(batch).logits
    tokens, packed, features = transformers_packing(reference, batch)
    per_tile = tile_grid(reference)[0] ** 2
    blocks, sources = [], []
    for block, ids, image_features in zip(tokens, packed, features):
        slots = (ids >= 0).nonzero().squeeze(1)
        sink = torch.isin(ids[slots], sink_rows(image_features, ids[slots], per_tile))
        order = torch.cat([sink.nonzero().squeeze(1), (~sink).nonzero().squeeze(1)])
        assert not torch.equal(order, torch.arange(len(order))), "a real permutation"
        permuted = block.clone()
        permuted[slots] = block[slots[order]]
        blocks.append(permuted)
        sources.append((slots, slots[order]))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    placeholders = ids == reference.config.image_token_id
    with torch.no_grad():
        embeds = reference.get_input_embeddings()(ids).masked_scatter(placeholders[..., None], torch.cat(blocks))
        extra = {}
        if position_mode == "original":
            positions = (mask.cumsum(-1) - 1).clamp_min(0)
            for row, (slots, source) in enumerate(sources):  # one image per row
                columns = placeholders[row].nonzero().squeeze(1)
                positions[row, columns[slots]] = positions[row, columns[source]].clone()
            extra["position_ids"] = positions
        theirs = reference(inputs_embeds=embeds, attention_mask=mask, **extra).logits
    torch.testing.assert_close(ours[mask.bool()], theirs[mask.bool()], atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("strategy", "k", "newlines"),
    [(DropSinks(), 2, [6, 3]), (SinksOnly(), 8, [3, 1])],
    ids=["drop_sinks", "sinks_only"],
)
def test_newlines_are_never_routed_and_a_shorter_block_reflows_around_them(
    pair, two_sizes, strategy, k, newlines, question_batch, rerouted
):
    """The strategy routes visual tokens only; the kept ones refill the visual slots in order, newlines stay in
    theirs, and the block ends after the last kept token and the newlines right after it. Kept: 70 of 80 and 34 of 40
    tokens (drop_sinks, k = 2: full rows and one row cut short), 40 and 24 (sinks_only, k = 8: a block ending on a
    row's end, which keeps its newline, and one ending mid-row)."""
    module, reference = pair
    batch = question_batch(module, two_sizes, generate=False)
    with torch.no_grad():
        seen = rerouted(module, strategy, k).pathway(batch)
        text = reference.get_input_embeddings()(batch["input_ids"])
    tokens, packed, features = transformers_packing(reference, batch)
    per_tile = tile_grid(reference)[0] ** 2
    placeholders = batch["input_ids"] == reference.config.image_token_id
    kept_newlines = []
    for i, (block, ids, image_features) in enumerate(zip(tokens, packed, features)):
        layout = ids >= 0
        sink = torch.isin(ids[layout], sink_rows(image_features, ids[layout], per_tile, k))
        keep = ~sink if isinstance(strategy, DropSinks) else sink
        assert torch.equal(seen.routed.sources[i], keep.nonzero().squeeze(1)), "visual tokens only, in order"
        slots, n = layout.nonzero().squeeze(1), int(keep.sum())
        end = int(slots[n - 1]) + 1
        while end < len(layout) and not layout[end]:
            end += 1
        kept_newlines.append(int((~layout[:end]).sum()))
        expected = block[:end].clone()
        expected[slots[:n]] = block[layout][keep]
        columns = placeholders[i].nonzero().squeeze(1)
        real = batch["attention_mask"][i].bool()
        row = torch.cat([text[i, : columns[0]], expected, text[i, columns[-1] + 1 :][real[columns[-1] + 1 :]]])
        merged = seen.inputs["inputs_embeds"][i][seen.inputs["attention_mask"][i].bool()]
        torch.testing.assert_close(merged, row, atol=1e-6, rtol=0)
    assert kept_newlines == newlines


def test_sinks_are_detected_and_counted_per_tile_and_a_newline_never_counts(pair, two_sizes, question_batch, rerouted):
    """TopK per ViT tile: the base view and every high-resolution tile carry their own sinks, each tile one entry of
    the sink statistics, whose norms are the image's patches' (no newline, no padding patch)."""
    module, reference = pair
    module = rerouted(module, NoneStrategy(), K)
    batch = question_batch(module, two_sizes)
    with torch.no_grad():
        seen = module.pathway(batch, padding_side="left")
    _, packed, features = transformers_packing(reference, batch)
    per_tile = tile_grid(reference)[0] ** 2
    norms = []
    for i, (ids, image_features) in enumerate(zip(packed, features)):
        rows = ids[ids >= 0]
        expected = torch.isin(rows, sink_rows(image_features, rows, per_tile))
        assert torch.equal(seen.sinks[i, : len(rows)], expected)
        assert torch.bincount(rows[expected] // per_tile).tolist() == [K] * len(seen.visual.tiles[i].unique())
        norms.append(image_features[rows].norm(dim=-1))
    module._observe("test", seen)
    _, stats = module.stats["test"].compute()
    assert stats["counts"].tolist() == [float(K)] * (5 + 3)
    torch.testing.assert_close(stats["norms"], torch.cat(norms).sort().values, atol=1e-4, rtol=0)


def test_images_are_redrawn_from_their_tiles_without_the_padding(pair, two_sizes):
    module, _ = pair
    batch = dict(
        module.processor.image_processor([Image.open(p).convert("RGB") for p in two_sizes], return_tensors="pt")
    )
    for drawn, path in zip(module.family.seen_images(batch, module.processor), two_sizes):
        original = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255
        assert drawn.shape == original.shape
        np.testing.assert_allclose(drawn.numpy(), original, atol=0.02)


def test_relevance_maps_say_the_family_does_not_provide_them(pair, two_sizes, question_batch):
    module, _ = pair
    batch = question_batch(module, two_sizes)
    with pytest.raises(NotImplementedError, match="several ViT sequences .* relevance maps are not provided"):
        relevance.capture(module.hf, module.family, batch, None)


def test_analyses_find_each_visual_token_between_the_newlines_and_the_prompt_after_the_block(
    pair, two_sizes, question_batch, rerouted
):
    """`visual_tokens` (propagation, massive_dims, decode) points at the LLM columns transformers fills with each
    patch, and the prompt queries start after the image's last newline."""
    module, reference = pair
    module = rerouted(module, NoneStrategy(), K)
    batch = question_batch(module, two_sizes)
    with torch.no_grad():
        tokens = visual_tokens(module, batch)
    _, packed, _ = transformers_packing(reference, batch)
    placeholders = batch["input_ids"] == reference.config.image_token_id
    for i, ids in enumerate(packed):
        columns = placeholders[i].nonzero().squeeze(1)
        assert tokens.rows[i] == i and torch.equal(tokens.columns[i, tokens.valid[i]], columns[ids >= 0])
        assert tokens.ends[i] == columns[-1] + 1 and ids[-1] == -1, "the block ends with a newline"
    _, queries, real = query_inputs(module, tokens, "prompt", 1)
    for i in range(len(packed)):
        assert int(queries[i][real[i]][0]) == int(tokens.ends[i])


@pytest.mark.parametrize("pair", ["llava_onevision"], indirect=True)
def test_onevision_images_of_a_several_image_sample_are_not_tiled(pair, two_sizes, assert_parity, monkeypatch):
    """transformers' several-image convention (nested image lists): each image is its base view and one newline."""
    module, reference = pair
    hf = hf_processor(reference, module.processor, monkeypatch)
    prompt = reference_prompt(ProcessorChatTemplate(), hf, TWO)
    expected = hf(images=[[Image.open(p).convert("RGB") for p in two_sizes]], text=[prompt], return_tensors="pt")
    assert expected["batch_num_images"].tolist() == [2]
    assert int((expected["input_ids"] == reference.config.image_token_id).sum()) == 2 * (16 + 1)
    batch = dict(expected)
    with torch.no_grad():
        visual = module.visual(batch)
    assert visual.lengths == [16, 16] and [layout.tolist() for layout in visual.layouts] == [[True] * 16 + [False]] * 2
    assert_parity(module, reference, batch, dict(expected))


def test_onevision_refuses_a_grid_it_would_interpolate_and_keeps_it_with_a_larger_anyres_max(
    tmp_path_factory, two_sizes, assert_parity, question_batch, loaded_pair
):
    """With anyres_max_1 transformers interpolates the 8 x 8 grid of a 64 px image to 4 x 4 (tokens mixing patches):
    refused, naming the setting that keeps every patch, which then matches transformers run with it."""
    path = ensure_tiny_anyres(
        tmp_path_factory.mktemp("anyres_max"), variant="llava_onevision", seed=2, vision_aspect_ratio="anyres_max_1"
    )
    model, processor = load_pretrained(path, family=LlavaOnevisionFamily())
    module = SinkflowModule(model.eval(), processor, LlavaOnevisionFamily(), NoneStrategy()).eval()
    batch = question_batch(module, two_sizes)
    assert (batch["input_ids"] == model.config.image_token_id).sum(dim=1).tolist() == [16 + 4 * 4 + 4, 16 + 3 * 4 + 3]
    message = (
        "image 0 (64x64 px) has 8x8 high-resolution patches, more than anyres_max_1 keeps, so the model interpolates "
        "them after the projector and its LLM tokens are no longer patches, which sinkflow routes. Set "
        "model.family.vision_aspect_ratio=anyres_max_4 (or more)"
    )
    with pytest.raises(ValueError, match=f"^llava_onevision: {re.escape(message)}"):
        module(batch)

    module, reference = loaded_pair(path, LlavaOnevisionFamily(vision_aspect_ratio="anyres_max_4"))
    batch = question_batch(module, two_sizes)
    assert (batch["input_ids"] == module.hf.config.image_token_id).sum(dim=1).tolist() == [88, 44]
    # LlavaOnevisionModel.forward drops a `vision_aspect_ratio` argument: only its config's setting counts.
    reference.config.vision_aspect_ratio = "anyres_max_4"
    keys = ("input_ids", "attention_mask", "pixel_values", "image_sizes", "batch_num_images")
    assert_parity(module, reference, batch, {k: batch[k] for k in keys})


def test_a_bad_anyres_max_names_its_key():
    with pytest.raises(ValueError, match=r"^`model.family.vision_aspect_ratio` must be anyres_max_<tiles> \(e.g."):
        LlavaOnevisionFamily(vision_aspect_ratio="anyres")


@pytest.mark.parametrize("pair", ["llava_onevision"], indirect=True)
def test_chatml_writes_onevisions_training_conversation_and_supervises_the_answers(pair, two_sizes):
    module, _ = pair
    sample = {
        "id": "c",
        "image": two_sizes[0],
        "conversations": [{"from": "human", "value": "<image>\nQ?"}, {"from": "gpt", "value": "white"}],
    }
    system = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\nQ?<|im_end|>\n"
    prompt = Collator(module.processor, ChatML(), generate=True)([sample])["meta"][0]["prompt"]
    assert prompt == system + "<|im_start|>assistant\n"
    batch = Collator(module.processor, ChatML())([sample])
    assert batch["meta"][0]["prompt"] == system + "<|im_start|>assistant\nwhite<|im_end|>\n"
    supervised = batch["input_ids"][0][batch["labels"][0] != -100]
    assert module.processor.tokenizer.decode(supervised) == "white<|im_end|>"


@pytest.mark.parametrize(
    ("option", "family", "template"),
    [
        ("llava_next_mistral_7b", LlavaNextFamily, ProcessorChatTemplate),
        ("llava_onevision_qwen2_7b", LlavaOnevisionFamily, ChatML),
        ("llava_onevision_qwen2_05b", LlavaOnevisionFamily, ChatML),
    ],
)
def test_the_real_checkpoints_configs_name_their_family_template_and_recipe(option, family, template):
    model = compose_config([f"model={option}"]).model
    assert type(instantiate(model.family)) is family and type(instantiate(model.template)) is template
    assert (model.lora.r, model.lora.alpha, model.optim.lr, model.optim.projector_lr) == (8, 16, 1e-4, 1e-5)
    assert model.checkpoint.startswith("llava-hf/") and model.simulated_sinks is None


@pytest.mark.parametrize("pair", ["llava_next"], indirect=True)
def test_a_kept_cls_token_is_named_rather_than_packed_as_a_patch(pair, two_sizes, question_batch):
    module, _ = pair
    batch = question_batch(module, two_sizes)
    with pytest.raises(ValueError, match=r"^a ViT tile gives 17 features for 16 patches: .* CLS token kept\?"):
        LlavaNextFamily(vision_feature_select_strategy="full").encode(module.hf, batch)
