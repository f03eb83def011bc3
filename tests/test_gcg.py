"""GCG: GLaMM's metrics on hand-computed cases, the GranD-f readers on a hand-made fixture in GLaMM's format,
and a whole `tools/test.py --task gcg` run on the embedded default's toy models (the session's smoke run)."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from flmm.data.gcg import load_gcg_split, read_gcg_file
from flmm.engine.gcg import noun_chunks
from flmm.engine.gcg_metrics import (
    TOKEN_OVERLAP_RULE,
    GcgImage,
    cider_d,
    gcg_metrics,
    image_miou,
    mask_ap,
    recalled,
    token_overlap,
)
from flmm.errors import DataError
from tests.conftest import TOY_CONFIG, coco_rle, load_tool, toy_overrides

H, W = 8, 10


def box(x0, y0, x1, y1) -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_text_rule_is_content_word_overlap():
    assert token_overlap("the red circle", "a circle") == pytest.approx(2 / 3)
    assert token_overlap("two blue squares", "the blue square") == pytest.approx(0.8)
    assert token_overlap("the red circle", "a green triangle") == 0.0


def test_recall_needs_iou_and_a_matching_phrase():
    gt = [box(0, 0, 4, 4), box(5, 0, 10, 4)]
    # first prediction: same mask, matching phrase; second: same mask, another phrase
    preds = [box(0, 0, 4, 4), box(5, 0, 10, 4)]
    assert recalled(gt, ["a red circle", "a blue square"], preds, ["the red circle", "a green thing"]) == 1
    # IoU 8 / 16 = 0.5 counts (>= 0.5, as GLaMM), 6 / 16 does not
    assert recalled([box(0, 0, 4, 4)], ["circle"], [box(0, 0, 4, 2)], ["circle"]) == 1
    assert recalled([box(0, 0, 4, 4)], ["circle"], [box(0, 0, 3, 2)], ["circle"]) == 0
    images = [GcgImage("c", ["a red circle", "x"], preds, "c", ["red circle", "blue square"], gt)]
    metrics = gcg_metrics(images)
    assert metrics["mask_recall"] == 0.5 and metrics["text_rule"] == TOKEN_OVERLAP_RULE


def test_miou_pairs_greedily_one_to_one():
    gt = [box(0, 0, 4, 4), box(4, 0, 8, 4)]
    # pred 0 covers gt 0 exactly (IoU 1) and half of gt 1's width next to it; pred 1 = left half of gt 1
    preds = [box(0, 0, 4, 4), box(4, 0, 6, 4)]
    assert image_miou(preds, gt) == pytest.approx((1.0 + 0.5) / 2)
    # a third prediction has nothing left to pair with and does not count; no pair at all gives 0
    assert image_miou([*preds, box(8, 4, 10, 8)], gt) == pytest.approx(0.75)
    assert image_miou([box(8, 4, 10, 8)], gt) == 0.0 and image_miou([], gt) == 0.0


def test_ap50_of_a_perfect_and_a_half_right_prediction():
    gt = [box(0, 0, 4, 4), box(5, 4, 10, 8)]
    assert mask_ap([(gt, gt)])["AP50"] == pytest.approx(1.0)
    # right first, then a miss: precision 1 up to recall 0.5 -> 51 of COCO's 101 recall points
    half = [box(0, 0, 4, 4), box(0, 5, 2, 8)]
    assert mask_ap([(half, gt)])["AP50"] == pytest.approx(51 / 101)
    assert mask_ap([([], gt)])["AP50"] == 0.0


def test_cider_of_identical_and_different_captions():
    refs = [["a red circle left of a blue square"], ["two green triangles near the top"]]
    assert cider_d([r[0] for r in refs], refs) == pytest.approx(10.0)
    # a caption shorter than 4 words has no 4-gram: 3 of the 4 n-gram orders match
    assert cider_d(["a red circle", "two green triangles near the top"], [["a red circle"], refs[1]]) == 8.75
    assert cider_d(["the sky", "some yellow grass"], refs) == 0.0
    assert cider_d(["a red circle"], [["a red circle"]]) == 0.0  # one image: every idf is 0


def test_noun_chunks():
    text = "A red circle is left of the two blue squares, and the sky."
    assert [text[s:e] for s, e in noun_chunks(text)] == [
        "A red circle",
        "left",
        "the two blue squares",
        "the sky",
    ]
    assert noun_chunks("") == [] and noun_chunks("is of the.") == []


def write_grandf(root: Path) -> Path:
    """GranD-f's layout, three formats as GLaMM publishes them: PSG (groundings), Flickr (COCO), RefCOCOg."""
    ann = root / "GranDf" / "annotations" / "train"
    ann.mkdir(parents=True)
    for folder in ("coco_2017/train2017", "flikcr_30k/train", "coco_2014/train2014"):
        (root / folder).mkdir(parents=True)
    Image.new("RGB", (W, H)).save(root / "coco_2014/train2014/COCO_train2014_000000000001.jpg")
    Image.new("RGB", (W, H)).save(root / "coco_2017/train2017/000000000010.jpg")
    caption = "A man rides a bike on the road."
    psg = [
        {
            "file_name": "000000000009.jpg",
            "caption": f'"{caption}"',
            "groundings": {
                "the road": {"token_positives": [22, 30], "rle_masks": [coco_rle(box(0, 6, 10, 8))]},
                "A man": {
                    "token_positives": [0, 5],
                    "rle_masks": [coco_rle(box(0, 0, 2, 4)), coco_rle(box(2, 0, 4, 4), compressed=False)],
                },
            },
        },
        {"file_name": "000000000010.jpg", "caption": "Nothing here.", "groundings": {}},
    ]
    (ann / "OpenPsgGCG_val.json").write_text(json.dumps(psg))
    flickr = {
        "images": [{"id": 7, "file_name": "7.jpg", "height": H, "width": W, "caption": caption}],
        "annotations": [
            {"id": 1, "image_id": 7, "tokens_positive": [[12, 18]], "sam_mask": coco_rle(box(4, 2, 8, 6))},
            {"id": 2, "image_id": 7, "tokens_positive": [[0, 5]], "sam_mask": coco_rle(box(0, 0, 4, 4))},
            {
                "id": 3,
                "image_id": 7,
                "tokens_positive": [[22, 30]],
                "sam_mask": coco_rle(box(0, 0, 1, 1)),
                "ignore": True,
            },
        ],
    }
    (ann / "flickr_mergedGT_GCG_val.json").write_text(json.dumps(flickr))
    refcocog = [
        {
            "img_file_name": "COCO_train2014_000000000001.jpg",
            "caption": "The Man on the left rides a bike.",
            "refs": [
                {"sentence": "a bike", "segmentation": [[4, 2, 8, 2, 8, 6, 4, 6]]},
                {"sentence": "the man on the left", "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]]},
                {"sentence": "a dog", "segmentation": [[0, 0, 1, 0, 1, 1]]},
            ],
        }
    ]
    (ann / "RefCOCOg_GCG_val.json").write_text(json.dumps(refcocog))
    return root


def test_grandf_readers_on_glamms_formats(tmp_path):
    root = write_grandf(tmp_path)
    first, empty = load_gcg_split(root, "gcg:psg_val")
    assert first.caption == "A man rides a bike on the road." and first.image_id == "000000000009"
    assert [p.text for p in first.phrases] == ["A man", "the road"] and first.phrases[1].span == (22, 30)
    masks = first.masks()
    assert (
        masks.shape == (2, H, W)
        and (masks[0] == box(0, 0, 4, 4)).all()
        and (masks[1] == box(0, 6, 10, 8)).all()
    )
    assert empty.phrases == () and empty.masks().shape == (0, H, W)
    assert first.image_path == root / "coco_2017/train2017/000000000009.jpg"

    [flickr] = load_gcg_split(root, "gcg:flickr_val")
    assert [p.text for p in flickr.phrases] == ["A man", "a bike"]  # in caption order, ignored one left out
    assert (flickr.masks()[1] == box(4, 2, 8, 6)).all()

    [ref] = load_gcg_split(root, "gcg:refcocog_val")
    assert ref.caption == "the man on the left rides a bike."
    assert [p.text for p in ref.phrases] == ["the man on the left", "a bike"]
    ref_masks = ref.masks()
    assert ref_masks.shape == (2, H, W) and ref_masks[0][1:3, 1:3].all() and not ref_masks[0][6:, :].any()


def test_malformed_grandf_files_name_the_file_and_field(tmp_path):
    root = write_grandf(tmp_path)
    path = root / "GranDf/annotations/train/OpenPsgGCG_val.json"
    images = root / "coco_2017/train2017"
    path.write_text(json.dumps([{"file_name": "a.jpg", "groundings": {}}]))
    with pytest.raises(DataError, match=r"OpenPsgGCG_val\.json: record #0: field 'caption' is missing"):
        read_gcg_file(path, images, "groundings")
    bad_span = {
        "file_name": "a.jpg",
        "caption": "a cat",
        "groundings": {"cat": {"token_positives": [2, 9], "rle_masks": []}},
    }
    path.write_text(json.dumps([bad_span]))
    with pytest.raises(DataError, match=r"grounding 'cat': field 'token_positives'.*<= 5"):
        read_gcg_file(path, images, "groundings")
    path.write_text("{not json")
    with pytest.raises(DataError, match=r"OpenPsgGCG_val\.json"):
        load_gcg_split(root, "gcg:psg_val")
    with pytest.raises(DataError, match="not a GCG split"):
        load_gcg_split(root, "gcg:nope")


SHORT_RLE = {"size": [H, W], "counts": [3, 2]}  # 5 pixels of 80: pycocotools would decode garbage


@pytest.mark.parametrize(
    ("name", "kind", "spoil", "message"),
    [
        (
            "OpenPsgGCG_val.json",
            "groundings",
            lambda data: data[0]["groundings"]["A man"]["rle_masks"].append(SHORT_RLE),
            r"OpenPsgGCG_val\.json: record #0: grounding 'A man': field 'rle_masks': RLE counts cover 5 "
            r"pixels but the 8x10 image has 80",
        ),
        (
            "flickr_mergedGT_GCG_val.json",
            "coco",
            lambda data: data["annotations"][1].update(sam_mask=SHORT_RLE),
            r"flickr_mergedGT_GCG_val\.json: annotation #1 \(image 7\): field 'sam_mask': RLE counts cover 5 "
            r"pixels but the 8x10 image has 80",
        ),
    ],
    ids=["groundings", "coco"],
)
def test_rle_counts_that_do_not_cover_the_image_name_the_file_and_field(tmp_path, name, kind, spoil, message):
    root = write_grandf(tmp_path)
    path = root / "GranDf/annotations/train" / name
    data = json.loads(path.read_text())
    spoil(data)
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=message):
        read_gcg_file(path, root / "coco_2017/train2017", kind)


def test_polygon_with_a_non_finite_coordinate_is_an_error_not_a_hang(tmp_path):
    root = write_grandf(tmp_path)
    path = root / "GranDf/annotations/train/RefCOCOg_GCG_val.json"
    data = json.loads(path.read_text())
    data[0]["refs"][1]["segmentation"] = [[0, 0, float("nan"), 0, 4, 4, 0, 4]]  # json writes it as NaN
    path.write_text(json.dumps(data))
    [ref] = read_gcg_file(path, root / "coco_2014/train2014", "refs")
    outcome: dict = {}

    def decode():
        try:
            ref.masks()
        except DataError as exc:
            outcome["error"] = str(exc)

    # pycocotools hangs on such a polygon: in a thread, a regression fails the test instead of hanging it.
    thread = threading.Thread(target=decode, daemon=True)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive(), "decoding the polygon hung"
    assert re.search(
        r"RefCOCOg_GCG_val\.json: record #0: ref #1: field 'segmentation': polygon 0: has a coordinate "
        r"that is not a finite number",
        outcome["error"],
    )


def test_gcg_run_on_the_embedded_default(smoke_run, toy_world, tmp_path, capsys):
    out = tmp_path / "gcg"
    argv = ["--task", "gcg", "--ckpt", str(smoke_run / "checkpoints" / "last.ckpt"), "--out", str(out)]
    assert load_tool("test").main([*argv, "--splits", "png:val2017", "--max-new-tokens", "12"]) == 0
    assert "mask_recall" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == "gcg" and results["mode"] == "trained-head"
    metrics = results["splits"]["png:val2017"]
    for key in ("mask_recall", "mIoU", "AP50", "AP", "CIDEr"):
        assert 0.0 <= metrics[key] <= (10.0 if key == "CIDEr" else 1.0), key
    assert metrics["text_rule"] == TOKEN_OVERLAP_RULE and "CIDEr" in metrics["caption_metrics"]
    predictions = sorted((out / "predictions" / "png_val2017").glob("*.json"))
    records = load_gcg_split(toy_world.data_root, "png:val2017")
    assert len(predictions) == len(records) == metrics["images"] > 0
    for path in predictions:
        pred = json.loads(path.read_text())
        assert len(pred["phrases"]) == len(pred["pred_masks"]) == len(pred["spans"])
        assert pred["source"] == "selector"  # the embedded default trains a keyword selector
        assert pred["glamm"].count("<p> ") == len(pred["phrases"]) == pred["glamm"].count(" </p> [SEG]")
        for m in pred["pred_masks"]:
            assert mask_utils.decode({**m, "counts": m["counts"].encode()}).shape == tuple(m["size"])
    assert (out / "results.md").read_text().startswith("GCG (trained-head)")


def test_gcg_run_training_free(toy_world, tmp_path):
    out = tmp_path / "gcg"
    argv = ["--task", "gcg", "--mode", "attend-and-segment", "--config", str(TOY_CONFIG), "--out", str(out)]
    overrides = toy_overrides(toy_world, tmp_path / "run")
    assert load_tool("test").main([*argv, "--max-new-tokens", "8", *overrides]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["mode"] == "attend-and-segment" and results["checkpoint"] is None
    assert results["splits"]["png:val2017"]["images"] == len(
        list((out / "predictions" / "png_val2017").iterdir())
    )
    # Without a keyword selector the description's noun chunks are grounded.
    sources = {json.loads(p.read_text())["source"] for p in (out / "predictions" / "png_val2017").iterdir()}
    assert sources == {"noun-chunks"}
