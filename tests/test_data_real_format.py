"""The loaders read the shared real-format fixture exactly as its truth.json says."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from omegaconf import OmegaConf

from flmm.config import load_config
from flmm.data.refcoco import REFER_DATASETS
from flmm.data.splits import build_split_dataset, default_eval_splits
from tests.conftest import load_tool

RES_SPLITS = [(ds, split) for ds, (_, _, splits) in REFER_DATASETS.items() for split in splits]


def _truth(root):
    return json.loads((root / "truth.json").read_text(encoding="utf-8"))


def _data_cfg(root):
    return load_config(None, [f"data.root={root}", "data.max_skip_fraction=0"]).data


def _queries(dataset):
    return [q for i in range(len(dataset)) for q in dataset[i]["queries"]]


@pytest.mark.parametrize(("name", "split"), RES_SPLITS)
def test_all_sentences_queries_match_truth(real_format_root, name, split):
    dataset = build_split_dataset(_data_cfg(real_format_root), f"{name}:{split}", "all-sentences")
    got = [
        {k: q[k] for k in ("ref_id", "ann_id", "image_id", "first_sentence", "area", "bbox")}
        | {"sent": q["expression"]}
        for q in _queries(dataset)
    ]
    assert got == _truth(real_format_root)["refcoco_family"][name][split]


@pytest.mark.parametrize(("name", "split"), RES_SPLITS)
def test_first_sentence_concat_has_one_query_per_object_and_one_sample_per_image(
    real_format_root, name, split
):
    truth = _truth(real_format_root)["refcoco_family"][name][split]
    dataset = build_split_dataset(_data_cfg(real_format_root), f"{name}:{split}", "first-sentence-concat")
    queries = _queries(dataset)
    first = [t for t in truth if t["first_sentence"]]
    assert [(q["ref_id"], q["expression"], q["area"]) for q in queries] == [
        (t["ref_id"], t["sent"], t["area"]) for t in first
    ]
    assert len(dataset) == len({t["image_id"] for t in truth})
    assert all(q["first_sentence"] for q in queries)


def test_first_sentence_concat_joins_the_objects_of_an_image_in_one_text(real_format_root):
    samples = [
        dataset[i]
        for name, split in RES_SPLITS
        for dataset in [
            build_split_dataset(_data_cfg(real_format_root), f"{name}:{split}", "first-sentence-concat")
        ]
        for i in range(len(dataset))
    ]
    sample = next(s for s in samples if len(s["queries"]) > 1)
    assert sample["text"] == ". ".join(q["expression"] for q in sample["queries"])
    for (start, end), query in zip(sample["phrase_spans"], sample["queries"]):
        assert sample["text"][start:end] == query["expression"]
    assert sample["masks"].shape[0] == len(sample["queries"])


def test_png_phrases_match_truth(real_format_root):
    dataset = build_split_dataset(_data_cfg(real_format_root), "png:val2017", "narrative")
    got = [
        {
            "image_id": q["image_id"],
            "segment_ids": q["segment_ids"],
            "plural": q["plural"],
            "isthing": q["isthing"],
            "area": q["area"],
        }
        for q in _queries(dataset)
    ]
    assert got == _truth(real_format_root)["png_val2017"]


def test_png_skips_the_narrative_without_grounded_phrases(real_format_root):
    narratives = json.loads((real_format_root / "coco/annotations/png_coco_val2017.json").read_text())
    dataset = build_split_dataset(_data_cfg(real_format_root), "png:val2017", "narrative")
    assert len(dataset) == sum(any(s["segment_ids"] for s in n["segments"]) for n in narratives) == 4


def test_png_phrase_spans_point_at_their_utterances(real_format_root):
    dataset = build_split_dataset(_data_cfg(real_format_root), "png:val2017", "narrative")
    sample = dataset[0]
    for (start, end), query in zip(sample["phrase_spans"], sample["queries"]):
        assert sample["text"][start:end] == query["expression"]


def test_masks_are_at_original_resolution_and_images_rgb(real_format_root):
    dataset = build_split_dataset(_data_cfg(real_format_root), "refcocog:val", "all-sentences")
    shapes = Counter()
    for i in range(len(dataset)):
        sample = dataset[i]
        h, w, c = sample["image"].shape
        assert c == 3
        assert tuple(sample["masks"].shape[1:]) == (h, w)
        shapes[(h, w)] += 1
    assert (240, 320) in shapes  # the grayscale image, read as RGB


def test_default_eval_splits_are_those_present(real_format_root):
    assert default_eval_splits(real_format_root) == [
        "refcoco:val",
        "refcoco:testA",
        "refcoco:testB",
        "refcoco+:val",
        "refcoco+:testA",
        "refcoco+:testB",
        "refcocog:val",
        "refcocog:test",
        "png:val2017",
    ]


def test_browse_data_writes_truth_for_every_query(real_format_root, tmp_path):
    browse_data = load_tool("browse_data")
    config = tmp_path / "cfg.yaml"
    OmegaConf.save(OmegaConf.create({"data": {"root": str(real_format_root)}}), config)
    out = tmp_path / "browse"
    assert (
        browse_data.main([str(config), "--split", "refcocog:test", "--out", str(out), "--overlays", "3"]) == 0
    )
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
    truth = _truth(real_format_root)["refcoco_family"]["refcocog"]["test"]
    assert [(r["expression"], r["area"], r["bbox"], r["first_sentence"]) for r in rows] == [
        (t["sent"], t["area"], t["bbox"], t["first_sentence"]) for t in truth
    ]
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["00000.png", "00001.png", "00002.png"]
