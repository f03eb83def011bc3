"""Attend-and-segment: aggregation and peaks, the demo with no checkpoint, tools/test.py beside the head,
and the demo's one-prefill capture (every answer token its own phrase) against per-phrase capture."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from flmm.engine.attend import aggregate_attention, attention_peaks
from flmm.lmm import LlavaAdapter
from tests.conftest import TOY_CONFIG, build_toy_world, load_tool, toy_overrides, write_reasonseg


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_toy_world(tmp_path_factory.mktemp("attend_world"))


def test_mean_aggregation_normalises_each_channel_first():
    attention = torch.zeros(1, 2, 2, 2)
    attention[0, 0, 0, 0] = 0.5  # a head that spends little attention on the image, all on one cell
    attention[0, 1] = 0.25  # a head spread evenly over the grid
    out = aggregate_attention(attention)
    assert torch.allclose(out[0], torch.tensor([[0.625, 0.125], [0.125, 0.125]]))


def test_top_fraction_keeps_the_most_concentrated_heads():
    attention = torch.full((1, 4, 3, 3), 1.0)
    attention[0, 2, 1, 2] = 50.0  # the one concentrated head
    out = aggregate_attention(attention, top_fraction=0.25)
    assert torch.allclose(out[0], attention[0, 2] / attention[0, 2].sum())
    with pytest.raises(ValueError, match="top_fraction"):
        aggregate_attention(attention, top_fraction=0.0)


def test_peaks_are_in_original_pixels_and_skip_the_padding():
    # A 40 x 80 image in a square input: 20 px of padding above and below the content (side 80).
    meta = {"orig_h": 40, "orig_w": 80, "resized_h": 40, "resized_w": 80}
    meta |= {"pad_top": 20, "pad_bottom": 20, "pad_left": 0, "pad_right": 0}
    maps = torch.zeros(2, 4, 4)
    maps[0, 0, 0] = 9.0  # in the padding: ignored
    maps[0, 2, 3] = 1.0  # row 2 of 4 = lower half of the content, column 3 = right quarter
    maps[1, 1, 0] = 1.0
    points = attention_peaks(maps, torch.tensor([0, 0]), [meta])
    x, y = points[0].tolist()
    assert 60 <= x < 80 and 20 <= y < 40
    x, y = points[1].tolist()
    assert x < 20 and y < 20


def test_demo_attend_and_segment_runs_without_a_checkpoint(world, tmp_path):
    image = sorted((world.data_root / "coco" / "train2017").glob("*.jpg"))[0]
    sets = toy_overrides(world, tmp_path / "unused")
    argv = ["--mode", "attend-and-segment", "--config", str(TOY_CONFIG), *sets, "--image", str(image)]
    out = tmp_path / "out"
    assert load_tool("demo").main([*argv, "--out", str(out), "--phrases", "red circle; blue square"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["mode"] == "attend-and-segment" and result["answer"] is None
    assert [p["text"] for p in result["phrases"]] == ["red circle", "blue square"]
    assert all(math.isfinite(p["score"]) for p in result["phrases"])
    assert (out / "overlay.png").is_file()
    top = ["--top-heads", "0.5", "--max-new-tokens", "4", "--source", "answer", "what is it?"]
    assert load_tool("demo").main([*argv, "--out", str(tmp_path / "q"), *top]) == 0
    assert json.loads((tmp_path / "q" / "result.json").read_text())["answer"] is not None


def test_test_py_scores_attend_and_segment_through_the_same_path(world, tmp_path):
    out = tmp_path / "eval"
    flags = ["--splits", "refcoco:val", "--protocol", "all-sentences", "--out", str(out), "--overlays", "1"]
    argv = ["--mode", "attend-and-segment", "--config", str(TOY_CONFIG), *flags]
    assert load_tool("test").main([*argv, *toy_overrides(world, tmp_path / "run")]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["mode"] == "attend-and-segment" and results["checkpoint"] is None
    metrics = results["splits"]["refcoco:val"]["all-sentences"]
    assert metrics["n_queries"] > 0 and 0 <= metrics["cIoU"] <= 100
    assert (out / "overlays" / "refcoco_val_all-sentences" / "best_01.png").is_file()


def test_mean_of_token_rows_is_the_phrase_attention(world):
    adapter = LlavaAdapter(world.lmm)
    image = np.random.default_rng(0).integers(0, 255, (30, 50, 3), dtype=np.uint8)
    text, spans = "the small red circle left of the tree", [(4, 20), (29, 37)]
    batch = adapter.encode([image], [text], [spans])
    per_phrase = adapter(**batch)
    encoded = adapter.encode_text([text], [[]], batch["images"])
    assert torch.equal(encoded.input_ids, batch["input_ids"])
    token_ids = (encoded.text_mask.long().cumsum(1) - 1).masked_fill(~encoded.text_mask, -1)
    per_token = adapter(encoded.input_ids, encoded.attention_mask, token_ids, batch["images"])
    owner = batch["phrase_ids"][0][encoded.text_mask[0]]
    for p in range(len(spans)):
        mean = per_token.attention[owner == p].mean(dim=0)
        assert torch.allclose(mean, per_phrase.attention[p], atol=1e-6)
        assert torch.equal(
            per_token.hidden_states[owner == p, 0], per_phrase.hidden_states[p][per_phrase.hidden_mask[p]]
        )


def test_reasonseg_answer_first_through_test_py(world, tmp_path):
    root = write_reasonseg(tmp_path / "data")
    out = tmp_path / "eval"
    flags = ["--splits", "reasonseg:val", "--protocol", "first-sentence-concat", "--out", str(out)]
    argv = [
        "--mode",
        "attend-and-segment",
        "--config",
        str(TOY_CONFIG),
        "--answer-first",
        "--max-new-tokens",
        "3",
    ]
    overrides = [*toy_overrides(world, tmp_path / "run"), f"data.root={root}"]
    assert load_tool("test").main([*argv, *flags, "--overlays", "0", *overrides]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["mode"] == "attend-and-segment, answer-first"
    metrics = results["splits"]["reasonseg:val"]["first-sentence-concat"]
    assert (metrics["n_queries"], metrics["n_short"], metrics["n_long"]) == (3, 1, 2)
    assert all(0 <= metrics[k] <= 100 for k in ("cIoU", "gIoU", "cIoU_short", "gIoU_long"))
