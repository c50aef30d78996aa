"""The pathway's tiles (sinks detected and counted per ViT tile, routed per image) and fixed tokens (an image block's
tokens that are not visual, e.g. LLaVA-NeXT's row-end newlines: they never move, routed tokens reflow around them)."""

import pytest
import torch

from sinkflow.models.families.llava import LlavaFamily
from sinkflow.models.tiny import TinyLlavaSpec, build_tiny_llava
from sinkflow.pathway import Routed, VisualFeatures, rebuild_rows, with_fixed
from sinkflow.sinks.detectors.topk import TopK


def two_tiled_images() -> VisualFeatures:
    """Image 0: tiles 0 and 1 interleaved (a stitched grid reads across tiles), 6 patches; image 1: one tile of 4
    patches (padded to 6). Norms: the patch index + 1, so the top norm of each tile is known."""
    features = torch.zeros(2, 6, 2)
    features[0, :, 0] = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    features[1, :4, 0] = torch.tensor([4.0, 1.0, 3.0, 2.0])
    tiles = [torch.tensor([0, 1, 0, 1, 0, 1]), torch.tensor([0, 0, 0, 0])]
    return VisualFeatures(features=features, lengths=[6, 4], keys=["a", "b"], tiles=tiles)


def test_the_detector_judges_each_tile_alone_and_sinks_map_back_to_the_image():
    visual = two_tiled_images()
    rows, lengths = visual.by_tile(visual.features)
    assert lengths == [3, 3, 4] and rows[0, :, 0].tolist() == [1, 3, 5, 0] and rows[1, :, 0].tolist() == [2, 4, 6, 0]
    sinks = visual.patch_sinks(TopK(k=1))
    # One sink per tile: tile 0 of image 0 its 5 (patch 4), tile 1 its 6 (patch 5); image 1 its 4 (patch 0).
    assert sinks.tolist() == [[False, False, False, False, True, True], [True, False, False, False, False, False]]
    whole = VisualFeatures(features=visual.features, lengths=[6, 4])  # the same images untiled: one sink each
    assert whole.patch_sinks(TopK(k=1)).sum(dim=1).tolist() == [1, 1]
    assert torch.equal(visual.from_tiles(rows), visual.features)
    assert visual.tile_keys() == ["a@0", "a@1", "b"]


def test_tokens_take_the_tile_of_their_patches():
    features = torch.arange(16.0).view(1, 8, 2)
    visual = VisualFeatures(features=features, group=2, tiles=[torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])], keys=["k"])
    rows, lengths = visual.by_tile(visual.token_features(), tokens=True)
    assert lengths == [2, 2] and rows[0, :, 0].tolist() == [0.0, 8.0] and rows[1, :, 0].tolist() == [4.0, 12.0]
    assert visual.detect(TopK(k=1), own_norm=True).tolist() == [[False, False, True, True]]
    assert visual.detect(TopK(k=1)).tolist() == [[False, False, True, True]]


def newline_layout() -> torch.Tensor:
    """Two rows of three visual slots, each row ending in a fixed token: V V V F V V V F."""
    return torch.tensor([True, True, True, False, True, True, True, False])


def routed(order: list[int]) -> Routed:
    sources = torch.tensor(order, dtype=torch.long)
    return Routed([sources[:, None] + 10.0], [sources])  # embedding: 10 + its source


def test_fixed_tokens_stay_in_their_slots_and_routed_tokens_fill_the_rest():
    fixed = [torch.tensor([[-1.0], [-2.0]])]
    out = with_fixed(routed([4, 0, 1, 2, 3, 5]), [newline_layout()], fixed)
    assert out.tokens[0][:, 0].tolist() == [14, 10, 11, -1, 12, 13, 15, -2]
    # Sources are block slots: visual token 4 came from slot 5 (after the first row's fixed token).
    assert out.sources[0].tolist() == [5, 0, 1, 3, 2, 4, 6, 7]


@pytest.mark.parametrize(
    ("order", "tokens"),
    [
        ([0, 1, 2], [10, 11, 12, -1]),  # a full row keeps its newline
        ([4, 1], [14, 11]),  # a partial row is cut after its last token
        ([0, 1, 2, 3], [10, 11, 12, -1, 13]),
        ([], []),
    ],
)
def test_a_shorter_routing_cuts_the_block_after_its_last_token_and_the_fixed_tokens_after_it(order, tokens):
    out = with_fixed(routed(order), [newline_layout()], [torch.tensor([[-1.0], [-2.0]])])
    assert out.tokens[0][:, 0].tolist() == tokens


def test_more_routed_tokens_than_visual_slots_is_an_error():
    with pytest.raises(ValueError, match="image 0: 7 routed tokens for 6 visual slots"):
        with_fixed(routed([0, 1, 2, 3, 4, 5, 5]), [newline_layout()], [torch.zeros(2, 1)])


def test_rebuilt_rows_mark_their_image_columns():
    embeds = torch.zeros(2, 5, 1)
    placeholders = torch.tensor([[False, True, True, True, False], [True, True, True, False, False]])
    inputs = {"inputs_embeds": embeds, "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])}
    two = Routed([torch.ones(2, 1), torch.ones(3, 1)], [torch.tensor([2, 0]), torch.arange(3)])
    out, columns = rebuild_rows(inputs, placeholders, [3, 3], two, "left")
    # Row 0 loses a token and is left-padded; row 1 keeps its own padding column.
    assert columns.tolist() == [[False, False, True, True, False], [True, True, True, False, False]]
    assert torch.equal(out["inputs_embeds"][..., 0].bool(), columns)


def test_merge_lays_routed_tokens_around_the_familys_fixed_tokens():
    """A family with a newline slot per row: a reversed routing fills the visual slots, the newlines stay."""

    class NewlineLlava(LlavaFamily):
        def fixed_tokens(self, model, visual):
            return [torch.full((2, model.config.text_config.hidden_size), -1.0) for _ in visual.slots]

    model, _ = build_tiny_llava(TinyLlavaSpec())
    family, image_id = NewlineLlava(), model.config.image_token_id
    width = model.config.text_config.hidden_size
    batch = {"input_ids": torch.tensor([[1] + [image_id] * 8 + [5]]), "attention_mask": torch.ones(1, 10).long()}
    visual = VisualFeatures(torch.zeros(1, 6, 4), layouts=[newline_layout()])
    tokens = torch.arange(6.0)[:, None].expand(6, width)
    reverse = Routed([tokens.flip(0)], [torch.arange(5, -1, -1)])
    merged = family.merge(model, batch, visual, reverse)[0]
    assert merged["inputs_embeds"][0, 1:9, 0].tolist() == [5, 4, 3, -1, 2, 1, 0, -1]
    dropped = family.merge(model, batch, visual, Routed([tokens[:2]], [torch.arange(2)]), padding_side="left")[0]
    assert dropped["inputs_embeds"][0, :, 0].tolist()[-3:-1] == [0, 1] and dropped["inputs_embeds"].shape[1] == 4


def test_sink_statistics_count_tiles():
    """Each tile ran through the ViT alone: statistics count it as an image, the same tile seen twice once."""
    from sinkflow.module import SinkflowModule
    from sinkflow.pathway import PathwayResult
    from sinkflow.sinks.strategies.none import NoneStrategy

    model, processor = build_tiny_llava(TinyLlavaSpec())
    module = SinkflowModule(model, processor, LlavaFamily(), NoneStrategy(), TopK(k=1))
    visual = two_tiled_images()
    for _ in range(2):
        module._observe("test", PathwayResult({}, visual, visual.patch_sinks(TopK(k=1))))
    scalars, samples = module.stats["test"].compute()
    assert samples["counts"].tolist() == [1, 1, 1] and scalars["sinks/per_image"] == 1.0
    assert samples["norms"].tolist() == [1, 1, 2, 2, 3, 3, 4, 4, 5, 6]  # tile norms once each, no padding
