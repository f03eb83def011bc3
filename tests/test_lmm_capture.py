"""Attention capture: eager and hooked agree, rows are causal, hooks change nothing, grids are right."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import LlavaForConditionalGeneration

from flmm.lmm import (
    CAPTURE_ATTN_IMPLEMENTATION,
    AttentionRecorder,
    ImageLayout,
    LlavaAdapter,
    LlavaNextAdapter,
    attention_rows,
    raster_cells,
)
from flmm.lmm.layout import RepeatedViewLayout, check_view_counts
from flmm.lmm.plan import plan_batch
from flmm.lmm.tiny import build_tiny_llava, build_tiny_llava_next

TEXTS = ["a red dog on the grass", "two small cats and a big blue car near the tall tree"]
SPANS = [[(0, 9), (17, 22)], [(0, 14), (19, 33), (34, 52)]]


def _images(seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in [(40, 60), (70, 30)]]


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("tiny_llava"), seed=0)


@pytest.fixture(scope="module")
def next_dir(tmp_path_factory):
    return build_tiny_llava_next(tmp_path_factory.mktemp("tiny_llava_next"), seed=0)


def _reference_rows(query, key, query_pos, key_valid, scaling):
    """Full S x S softmax with repeated kv heads, then the requested rows (the slow, obvious way)."""
    key = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)
    scores = query @ key.transpose(-1, -2) * scaling
    seq = query.shape[2]
    causal = torch.ones(seq, seq, dtype=torch.bool).tril()
    allowed = causal[None, None] & key_valid[:, None, None, :]
    probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    index = query_pos[:, None, :, None].expand(-1, probs.shape[1], -1, seq)
    return probs.gather(2, index)


def test_attention_rows_are_causal_and_match_full_softmax():
    torch.manual_seed(0)
    batch, heads, kv_heads, seq, dim = 2, 6, 2, 11, 8
    query = torch.randn(batch, heads, seq, dim)
    key = torch.randn(batch, kv_heads, seq, dim)
    key_valid = torch.ones(batch, seq, dtype=torch.bool)
    key_valid[1, :3] = False  # left padding in sample 1
    query_pos = torch.tensor([[0, 4, 10], [3, 7, 9]])
    rows = attention_rows(query, key, query_pos, key_valid, dim**-0.5)

    assert rows.shape == (batch, heads, 3, seq)
    later = torch.arange(seq)[None, None, None, :] > query_pos[:, None, :, None]
    assert torch.all(rows[later.expand_as(rows)] == 0)
    assert torch.all(rows[1, :, :, :3] == 0)
    torch.testing.assert_close(rows.sum(-1), torch.ones(batch, heads, 3))
    torch.testing.assert_close(rows, _reference_rows(query, key, query_pos, key_valid, dim**-0.5))


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_eager_and_hooked_agree_on_llava(llava_dir, padding_side):
    hooked = LlavaAdapter(llava_dir, capture="hooked")
    eager = LlavaAdapter(llava_dir, capture="eager")
    batch = hooked.encode(_images(), TEXTS, SPANS, padding_side=padding_side)
    assert batch["attention_mask"].sum(1).tolist()[0] < batch["attention_mask"].shape[1]  # lengths differ

    out_hooked, out_eager = hooked(**batch), eager(**batch)

    assert out_hooked.attention.shape == (5, 3 * 4, 4, 4)
    assert out_hooked.attention.dtype == torch.float32
    assert out_hooked.phrase_batch_index.tolist() == [0, 0, 1, 1, 1]
    assert out_hooked.attention.amax() > 0.2  # a peaky map, so the comparison below means something
    assert (out_hooked.attention - out_eager.attention).abs().max() <= 1e-5
    torch.testing.assert_close(out_hooked.hidden_states, out_eager.hidden_states, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("capture", ["hooked", "eager"])
def test_the_frozen_forward_under_bf16_autocast_gives_what_inference_gives(llava_dir, capture):
    """bf16-mixed training runs the step under autocast: the maps and hidden states the head trains on are
    still those of the model's own dtype (here float32), bit for bit."""
    adapter = LlavaAdapter(llava_dir, capture=capture)
    batch = adapter.encode(_images(), TEXTS, SPANS)
    plain = adapter(**batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = adapter(**batch)
    assert mixed.attention.dtype == mixed.hidden_states.dtype == torch.float32
    assert torch.equal(mixed.attention, plain.attention)
    assert torch.equal(mixed.hidden_states, plain.hidden_states)


def test_padding_side_does_not_change_the_maps(llava_dir):
    adapter = LlavaAdapter(llava_dir, capture="hooked")
    right = adapter(**adapter.encode(_images(), TEXTS, SPANS, padding_side="right"))
    left = adapter(**adapter.encode(_images(), TEXTS, SPANS, padding_side="left"))
    assert (right.attention - left.attention).abs().max() <= 1e-5
    torch.testing.assert_close(right.hidden_states, left.hidden_states, atol=1e-5, rtol=1e-5)
    assert torch.equal(right.hidden_mask, left.hidden_mask)


def test_image_positions_are_found_per_sample_under_left_padding(llava_dir):
    adapter = LlavaAdapter(llava_dir)
    batch = adapter.encode(_images(), TEXTS, SPANS, padding_side="left")
    layouts = [adapter.layout(image) for image in batch["images"]]
    plan = plan_batch(
        batch["input_ids"], batch["attention_mask"], batch["phrase_ids"], adapter.image_token_id, layouts
    )
    for sample in range(2):
        expected = (batch["input_ids"][sample] == adapter.image_token_id).nonzero().flatten()
        assert torch.equal(plan.request.image_pos[sample], expected)
    starts = plan.request.image_pos[:, 0].tolist()
    assert starts[0] != starts[1]  # the shorter sample's image moved right with the padding


def test_hooked_capture_leaves_logits_bit_identical(llava_dir):
    model = LlavaForConditionalGeneration.from_pretrained(llava_dir)
    adapter = LlavaAdapter(llava_dir)
    batch = adapter.encode(_images(), TEXTS, SPANS, padding_side="left")
    inputs = adapter.model_inputs(batch["input_ids"], batch["attention_mask"], batch["images"])
    with torch.no_grad():
        plain = model(**inputs).logits
        model.set_attn_implementation({"text_config": CAPTURE_ATTN_IMPLEMENTATION})
        recorder = AttentionRecorder([layer.self_attn for layer in model.model.language_model.layers])
        layouts = [adapter.layout(image) for image in batch["images"]]
        plan = plan_batch(
            inputs["input_ids"],
            inputs["attention_mask"],
            batch["phrase_ids"],
            adapter.image_token_id,
            layouts,
        )
        with recorder.record(plan.request) as maps:
            hooked = model(**inputs).logits
    assert all(layer_map is not None for layer_map in maps)
    assert torch.equal(plain, hooked)


def test_llava_next_maps_have_base_and_anyres_channels(next_dir):
    hooked = LlavaNextAdapter(next_dir, capture="hooked")
    eager = LlavaNextAdapter(next_dir, capture="eager")
    batch = hooked.encode(_images(), TEXTS, SPANS, padding_side="left")
    # base crop + 2 x 2 tiles for the wide image, base + 2 x 1 for the tall one
    assert [tuple(image["pixel_values"].shape) for image in batch["images"]] == [
        (5, 3, 32, 32),
        (3, 3, 32, 32),
    ]

    out = hooked(**batch)

    layers, heads = 3, 4
    assert out.attention.shape == (5, 2 * layers * heads, 4, 4)
    assert out.grid.channels == 2 * layers * heads and out.grid.size == (4, 4)
    # 40x60 (wide) loses rows to unpadding, 70x30 (tall) loses columns.
    assert [layout.view_shapes for layout in out.grid.layouts] == [((4, 4), (6, 8)), ((4, 4), (8, 4))]
    assert out.hidden_states.shape == (5, 4, layers, 64)
    assert (out.attention - eager(**batch).attention).abs().max() <= 1e-5


def test_llava_next_layout_matches_transformers_packing(next_dir):
    adapter = LlavaNextAdapter(next_dir)
    batch = adapter.encode(_images(), TEXTS, SPANS)
    layouts = [adapter.layout(image) for image in batch["images"]]
    vision = adapter.vision_inputs(batch["images"])
    with torch.no_grad():
        packed = adapter.lmm.model.get_image_features(
            vision["pixel_values"], vision["image_sizes"]
        ).pooler_output
    newline = adapter.lmm.model.image_newline
    for features, layout in zip(packed, layouts, strict=True):
        assert features.shape[0] == layout.num_tokens
        is_newline = (features == newline).all(dim=1)
        assert torch.equal(is_newline, layout.token_cells[:, 0] < 0)
        assert int(is_newline.sum()) == layout.view_shapes[1][0]


def test_image_layout_drops_row_breaks_and_resizes_every_view_to_the_grid():
    cells = torch.cat([raster_cells(2, 2), raster_cells(2, 4, view=1, row_break=True)])
    layout = ImageLayout(cells, ((2, 2), (2, 4)))
    base = torch.arange(4.0)
    anyres = torch.tensor([[1.0, 1.0, 3.0, 3.0, -100.0], [1.0, 1.0, 3.0, 3.0, -100.0]]).flatten()
    grid = layout.to_grid(torch.cat([base, anyres])[None, None], (2, 2))
    assert grid.shape == (1, 2, 2, 2)
    assert torch.equal(grid[0, 0], base.view(2, 2))
    assert torch.allclose(grid[0, 1], torch.tensor([[1.0, 3.0], [1.0, 3.0]]))


def test_hooked_adapter_generates_like_the_plain_model(llava_dir):
    adapter = LlavaAdapter(llava_dir, capture="hooked")
    plain = LlavaForConditionalGeneration.from_pretrained(llava_dir)
    batch = adapter.encode(_images()[:1], ["a red dog"], [[(0, 9)]])
    inputs = adapter.model_inputs(batch["input_ids"], batch["attention_mask"], batch["images"])
    inputs.pop("position_ids")
    settings = {
        "max_new_tokens": 6,
        "do_sample": False,
        "pad_token_id": adapter.processor.tokenizer.pad_token_id,
    }
    with torch.no_grad():
        assert torch.equal(adapter.lmm.generate(**inputs, **settings), plain.generate(**inputs, **settings))


def test_copied_adapter_still_captures(llava_dir):
    adapter = LlavaAdapter(llava_dir, capture="hooked")
    batch = adapter.encode(_images(), TEXTS, SPANS)
    restored = pickle.loads(pickle.dumps(adapter))
    torch.testing.assert_close(restored(**batch).attention, adapter(**batch).attention)


def test_a_repeated_view_layout_gives_view_0_twice():
    layout = RepeatedViewLayout(raster_cells(2, 2), ((2, 2), (2, 2)))
    grid = layout.to_grid(torch.arange(4.0)[None, None], (2, 2))
    assert grid.shape == (1, 2, 2, 2) and torch.equal(grid[0, 0], grid[0, 1])
    assert torch.equal(grid[0, 0], torch.arange(4.0).view(2, 2))


def test_a_batch_with_a_view_count_other_than_the_familys_is_refused():
    one_view = ImageLayout(raster_cells(2, 2), ((2, 2),))
    check_view_counts([one_view, one_view], 1)
    with pytest.raises(ValueError, match="expected 2 views per image"):
        check_view_counts([one_view], 2)
