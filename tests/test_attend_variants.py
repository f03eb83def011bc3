"""Attend-and-segment's `authors` variant step by step on hand-made maps, and on a tiny LLaVA against a
direct re-computation from transformers' own `generate(output_attentions=True)` attentions (eager)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from flmm.demo.answer import GenerationSettings, generation_inputs, run_generate
from flmm.demo.decode_capture import generate_with_features, prefill_features
from flmm.engine.attend import (
    AttendAndSegment,
    aggregate_attention,
    authors_phrase_maps,
    choose_masks,
    emitting_ids,
    pixel_peaks,
    root_tokens,
    root_word_span,
    select_heads,
)
from flmm.errors import ConfigError
from flmm.lmm import LlavaAdapter

SQUARE = {"orig_h": 8, "orig_w": 8, "resized_h": 8, "resized_w": 8}
SQUARE |= {"pad_top": 0, "pad_bottom": 0, "pad_left": 0, "pad_right": 0}


def test_a_sink_cell_wins_without_subtraction_and_loses_with_it():
    tokens = torch.full((3, 1, 4, 4), 0.01)
    tokens[:, 0, 0, 0] = 0.5  # the sink: every token of the response attends to it
    tokens[1, 0, 2, 3] = 0.3  # the phrase's token looks at its object
    raw = tokens[1:2]
    assert divmod(int(aggregate_attention(raw)[0].argmax()), 4) == (0, 0)
    maps = authors_phrase_maps(tokens, 1, "all", [[1]])
    assert divmod(int(maps[0].argmax()), 4) == (2, 3)
    assert torch.allclose(maps[0], tokens[1, 0] - tokens[:, 0].mean(dim=0))


def test_emitting_ids_give_each_token_the_previous_position():
    text_mask = torch.tensor(
        [[False, False, True, True, True, False], [False, True, True, False, False, False]]
    )
    ids = emitting_ids(text_mask)
    assert ids.tolist() == [[-1, 0, 1, 2, -1, -1], [0, 1, -1, -1, -1, -1]]


def test_root_word_fallback_is_the_last_word():
    assert root_word_span("the small red circle.", 10) == ((24, 30), "last-word")
    assert root_word_span("...", 2) == ((2, 5), "last-word")
    text = "a dog and the red circle"
    offsets = [(0, 1), (2, 5), (6, 9), (10, 13), (14, 17), (18, 21), (21, 24)]
    assert root_tokens(offsets, text, (10, 24)) == [5, 6]  # "circ" + "le"
    assert root_tokens(offsets, text, (0, 5)) == [1]


def test_heads_authors_keeps_head_h_minus_2_of_every_layer():
    layers, heads = 3, 4
    attention = torch.arange(layers * heads, dtype=torch.float)[None, :, None, None].expand(2, -1, 2, 2)
    kept = select_heads(attention, heads, "authors")
    assert kept[0, :, 0, 0].tolist() == [2.0, 6.0, 10.0]
    assert torch.equal(select_heads(attention, heads, "all"), attention)
    with pytest.raises(ConfigError, match="H >= 2"):
        select_heads(attention[:, :3], 1, "authors")


def test_pixel_peaks_upsample_bicubically_and_crop_the_padding():
    # A 4 x 8 image padded to an 8 x 8 square (2 rows above and below), on a 4 x 4 grid.
    meta = {"orig_h": 4, "orig_w": 8, "resized_h": 4, "resized_w": 8}
    meta |= {"pad_top": 2, "pad_bottom": 2, "pad_left": 0, "pad_right": 0}
    maps = torch.zeros(1, 4, 4)
    maps[0, 0, 0] = 2.0  # higher, but in the padding (its bicubic tail reaches the content: weaker)
    maps[0, 2, 3] = 1.0
    x, y = pixel_peaks(maps, torch.tensor([0]), [meta])[0].tolist()
    assert 6 <= x < 8 and 2 <= y < 4


def _stub_grounder(variant: str) -> AttendAndSegment:
    """A grounder whose SAM returns three constant masks with predicted IoUs 0.9, 0.2, 0.5."""

    class Decoder(torch.nn.Module):
        def forward(self, embedding, pe, sparse, dense, multimask_output):
            assert multimask_output
            n = sparse.shape[0]
            low = torch.stack([torch.full((n, 4, 4), float(k)) for k in range(3)], dim=1)
            return low, torch.tensor([[0.9, 0.2, 0.5]]).expand(n, -1)

    encoder = _PromptEncoder()
    refiner = torch.nn.Module()
    refiner.sam = SimpleNamespace(
        prompt_encoder=encoder, mask_decoder=Decoder(), postprocess_masks=lambda low, size, original: low
    )
    refiner.input_size = lambda h, w: (h, w)
    grounder = AttendAndSegment.__new__(AttendAndSegment)
    torch.nn.Module.__init__(grounder)
    grounder.refiner, grounder.variant, grounder.heads, grounder.top_fraction = refiner, variant, "all", None
    return grounder


class _PromptEncoder:
    """SAM's prompt encoder, reduced to the shapes the grounder passes on."""

    def __call__(self, points, boxes, masks):
        return torch.zeros(len(points[0]), 1, 2), None

    def get_dense_pe(self):
        return None


def test_sam_last_mask_for_authors_best_iou_for_flmm():
    assert choose_masks(torch.tensor([[0.9, 0.2, 0.5]]), "best-iou").tolist() == [0]
    assert choose_masks(torch.tensor([[0.9, 0.2, 0.5]]), "last").tolist() == [2]
    points, index = torch.tensor([[1, 1]]), torch.tensor([0])
    image = torch.zeros(3, 4, 4, dtype=torch.uint8)
    embedding = torch.zeros(1, 1, 1, 1)
    for variant, value, score in (("flmm", 0.0, 0.9), ("authors", 2.0, 0.5)):
        out = _stub_grounder(variant).prompt_sam(points, index, [image], embedding)
        assert float(out.masks[0][0, 0]) == value and float(out.scores[0]) == pytest.approx(score)


def test_variant_and_heads_are_checked():
    with pytest.raises(ConfigError, match=r"attend\.variant"):
        AttendAndSegment(None, None, variant="paper")
    with pytest.raises(ConfigError, match=r"belongs to attend\.variant=authors"):
        AttendAndSegment(None, None, variant="flmm", heads="authors")


def test_authors_rows_equal_transformers_generate_attentions(toy_world):
    """Decode capture's emitting rows = the last query row of each generate() step (eager attentions), the
    teacher-forced previous-position rows equal them too, and the phrase map is their re-computation."""
    from transformers import LlavaForConditionalGeneration

    adapter = LlavaAdapter(toy_world.lmm)
    image = np.random.default_rng(0).integers(0, 255, (24, 40, 3), dtype=np.uint8)
    lmm_image = adapter.image_transform()(image)["lmm_image"]
    prompt = adapter.prompt("what is in the image?")
    settings = GenerationSettings(max_new_tokens=6)
    text, features = generate_with_features(adapter, lmm_image, prompt, settings, emitting=True)
    # The toy world's LLaVA is fixed, and so is its answer: one that re-tokenizes as it was generated.
    assert features is not None, f"the answer {text!r} does not survive re-tokenizing"
    assert features.rows == "emitting"

    eager = LlavaForConditionalGeneration.from_pretrained(toy_world.lmm, attn_implementation="eager").eval()
    inputs = generation_inputs(adapter, lmm_image, prompt)
    with torch.no_grad():
        out = eager.generate(
            **inputs, **settings.generate_kwargs(), output_attentions=True, return_dict_in_generate=True
        )
    reference = run_generate(adapter, inputs, settings)
    assert torch.equal(out.sequences, reference)
    image_pos = (inputs["input_ids"][0] == adapter.image_token_id).nonzero().flatten()
    layout = adapter.layout(lmm_image)
    count = len(features.offsets)
    rows = torch.stack(
        [torch.cat([layer[0, :, -1, image_pos] for layer in out.attentions[k]]) for k in range(count)]
    )  # (T, L * H, N)
    direct = layout.to_grid(rows.float(), adapter.grid_size)
    assert torch.allclose(features.attention, direct, atol=1e-5)

    forced = prefill_features(adapter, lmm_image, prompt, text, emitting=True)
    assert torch.allclose(forced.attention, direct, atol=1e-5)

    members = [list(range(count))[-1:]]
    for heads, channels in (("all", slice(None)), ("authors", slice(0, None, adapter.num_heads))):
        maps = authors_phrase_maps(features.attention, adapter.num_heads, heads, members)
        kept = direct[:, channels].mean(dim=1)
        assert torch.allclose(maps[0], kept[-1] - kept.mean(dim=0), atol=1e-5)
