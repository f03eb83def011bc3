"""Training samples: all referred objects of an image in one sample, a fresh sentence per object per epoch."""

from __future__ import annotations

import pytest
import torch

from flmm.config import load_config
from flmm.data.collate import collate_grounding
from flmm.data.splits import build_split_dataset
from flmm.data.transforms import LlavaPadTransform, LMMInputs


@pytest.fixture
def train_set(real_format_root):
    cfg = load_config(None, [f"data.root={real_format_root}"]).data
    return build_split_dataset(cfg, "refcocog:val", "train")


def test_one_sample_per_image_holding_every_referred_object(train_set):
    per_image = train_set.refer.objects_by_image()
    assert len(train_set) == len(per_image)
    for i in range(len(train_set)):
        sample = train_set[i]
        assert sorted(q["ref_id"] for q in sample["queries"]) == sorted(
            o.ref_id for o in per_image[sample["image_id"]]
        )
        for (start, end), query in zip(sample["phrase_spans"], sample["queries"]):
            assert sample["text"][start:end] == query["expression"]


def test_sentence_draw_is_fixed_within_an_epoch_and_changes_across_epochs(train_set):
    def draw():
        return [q["sent_id"] for i in range(len(train_set)) for q in train_set[i]["queries"]]

    train_set.set_epoch(3)
    first = draw()
    assert draw() == first
    draws = set()
    for epoch in range(8):
        train_set.set_epoch(epoch)
        draws.add(tuple(draw()))
    assert len(draws) > 1


def test_every_sentence_is_seen_over_epochs(train_set):
    seen = set()
    for epoch in range(40):
        train_set.set_epoch(epoch)
        seen.update(q["sent_id"] for i in range(len(train_set)) for q in train_set[i]["queries"])
    assert seen == {sid for o in train_set.refer.objects for sid in o.sent_ids}


def test_collate_keeps_each_images_lmm_inputs_and_original_sizes(real_format_root):
    cfg = load_config(None, [f"data.root={real_format_root}"]).data
    transform = LMMInputs(LlavaPadTransform(size=56))
    dataset = build_split_dataset(cfg, "refcoco:train", "first-sentence-concat", transform)
    batch = collate_grounding([dataset[0], dataset[5]])
    assert [tuple(image["pixel_values"].shape) for image in batch["lmm_image"]] == [(3, 56, 56)] * 2
    for image, masks, meta in zip(batch["images"], batch["masks"], batch["pad_meta"]):
        assert image.dtype == torch.uint8 and image.shape[0] == 3
        assert masks.shape[1:] == image.shape[1:] == (meta["orig_h"], meta["orig_w"])
    assert len(batch["text"]) == len(batch["queries"]) == 2


def test_only_narratives_carry_word_selection_labels(real_format_root):
    cfg = load_config(None, [f"data.root={real_format_root}"]).data
    transform = LlavaPadTransform(size=56)
    res = [
        build_split_dataset(cfg, "refcoco:train", protocol, transform)[0]
        for protocol in ("train", "all-sentences", "first-sentence-concat")
    ]
    narrative = build_split_dataset(cfg, "png:val2017", "narrative", transform)[0]
    assert [s["phrases_select_words"] for s in res] == [False, False, False]
    assert narrative["phrases_select_words"] is True
    batch = collate_grounding([res[0], narrative])
    assert batch["phrases_select_words"].dtype == torch.bool
    assert batch["phrases_select_words"].tolist() == [False, True]
