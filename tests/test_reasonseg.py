"""ReasonSeg: the on-disk format (a tiny fixture written here), masks as LISA draws them, the split name, and
gIoU / cIoU overall and for short / long queries through tools/test.py's evaluation, ignore regions out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from flmm.config import load_config
from flmm.data.reasonseg import ReasonSegDataset, parse_reasonseg_json
from flmm.data.splits import build_split_dataset, default_eval_splits, parse_split, split_exists
from flmm.engine.evaluate import PhrasePredictions, evaluate, ground_truth_predictor
from flmm.errors import DataError
from tests.conftest import REASONSEG_IMAGES as IMAGES
from tests.conftest import REASONSEG_SIZE, rect, write_reasonseg

H, W = REASONSEG_SIZE


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return write_reasonseg(tmp_path_factory.mktemp("reasonseg"))


def test_protocols_make_one_sample_per_query_or_per_image(root):
    assert len(ReasonSegDataset(root, "val", "all-sentences")) == 4
    first = ReasonSegDataset(root, "val", "first-sentence-concat")
    assert [first[i]["text"] for i in range(3)] == [IMAGES[n][0][0] for n in "abc"]
    assert len(ReasonSegDataset(root, "val", "train")) == 3


def test_masks_are_drawn_as_lisa_draws_them(root):
    samples = {
        s["image_id"]: s
        for s in (ReasonSegDataset(root, "val", "first-sentence-concat")[i] for i in range(3))
    }
    a = samples["a"]
    assert a["masks"].shape == (1, H, W) and a["masks"].dtype == torch.bool
    assert int(a["masks"].sum()) == 21 * 11  # cv2 fills the polygon with its outline: both edges included
    assert not a["queries"][0]["ignore_mask"].any()
    b_target, b_ignore = samples["b"]["masks"][0], samples["b"]["queries"][0]["ignore_mask"]
    assert int(b_ignore.sum()) == 6 * 6 and not (b_target & b_ignore).any()  # smaller ignore painted on top
    assert int(b_target.sum()) == 21 * 41 - 36  # the "flag" shape is skipped
    c_target, c_ignore = samples["c"]["masks"][0], samples["c"]["queries"][0]["ignore_mask"]
    assert bool(c_target[25, 45]) and not bool(c_ignore[25, 45])  # the larger ignore lies under the target
    assert bool(c_ignore[12, 32]) and bool(c_target[46, 8])


def test_queries_say_short_or_long(root):
    dataset = ReasonSegDataset(root, "val", "all-sentences")
    queries = [dataset[i]["queries"][0] for i in range(len(dataset))]
    assert [q["query_length"] for q in queries] == ["short", "short", "long", "long"]
    assert [q["is_sentence"] for q in queries] == [False, False, True, True]
    assert queries[1]["query_id"] == "reasonseg:val:a:q1" and queries[1]["expression"] == "what is red here?"


def test_a_malformed_file_is_named_with_its_field(root, tmp_path):
    bad = tmp_path / "reason_seg" / "ReasonSeg" / "val" / "x.json"
    bad.parent.mkdir(parents=True)
    bad.write_text(
        json.dumps({"shapes": [{"label": "target", "points": rect(0, 0, 3, 3)}], "is_sentence": True})
    )
    with pytest.raises(DataError, match=r"x\.json: field 'text'"):
        parse_reasonseg_json(bad)
    with pytest.raises(DataError, match=r"x\.json"):
        ReasonSegDataset(tmp_path, "val")


def test_a_windows_1252_file_is_read_as_lisa_reads_it(tmp_path):
    path = tmp_path / "w.json"
    record = {"text": ["Where is the caf\u00e9\u2019s sign?"], "is_sentence": False}
    record["shapes"] = [{"label": "target", "points": rect(0, 0, 3, 3), "shape_type": "polygon"}]
    path.write_bytes(json.dumps(record, ensure_ascii=False).encode("cp1252"))
    with pytest.raises(UnicodeDecodeError):
        path.read_text(encoding="utf-8")
    assert parse_reasonseg_json(path).texts == ("Where is the caf\u00e9\u2019s sign?",)


def test_split_name_is_registered(root, tmp_path):
    assert parse_split("reasonseg:val") == ("reasonseg", "val")
    with pytest.raises(DataError, match="reasonseg has splits"):
        parse_split("reasonseg:dev")
    assert split_exists(root, "reasonseg:val") and not split_exists(tmp_path, "reasonseg:val")
    assert default_eval_splits(root) == ["reasonseg:val"]


def _evaluate(root: Path, out: Path, predictor) -> dict:
    cfg = load_config(
        None,
        [
            f"data.root={root}",
            "data.num_workers=0",
            "data.batch_size=2",
            "train.accelerator=cpu",
            "train.devices=1",
            "train.precision=32",
            "train.progress_bar=false",
        ],
    )
    results = evaluate(None, cfg, ["reasonseg:val"], out_dir=out, predictor=predictor)
    return results["splits"]["reasonseg:val"]


def test_ground_truth_scores_100_and_ignore_regions_do_not_count(root, tmp_path):
    def with_ignored(batch: dict) -> PhrasePredictions:
        masks = [
            q["ignore_mask"] | m.bool()
            for qs, ms in zip(batch["queries"], batch["masks"])
            for q, m in zip(qs, ms)
        ]
        return PhrasePredictions(masks)

    for predictor in (ground_truth_predictor, with_ignored):
        results = _evaluate(root, tmp_path / predictor.__name__, predictor)
        assert list(results) == ["all-sentences", "first-sentence-concat"]
        metrics = results["all-sentences"]
        for key in ("cIoU", "gIoU", "cIoU_short", "gIoU_short", "cIoU_long", "gIoU_long"):
            assert metrics[key] == 100.0, key
        assert (metrics["n_queries"], metrics["n_short"], metrics["n_long"]) == (4, 2, 2)
        assert results["first-sentence-concat"]["n_queries"] == 3


def test_everything_predicted_scores_the_target_share_of_the_non_ignored_pixels(root, tmp_path):
    def everything(batch: dict) -> PhrasePredictions:
        return PhrasePredictions([torch.ones_like(m, dtype=torch.bool) for ms in batch["masks"] for m in ms])

    metrics = _evaluate(root, tmp_path / "all", everything)["first-sentence-concat"]
    dataset = build_split_dataset(
        load_config(None, [f"data.root={root}"]).data, "reasonseg:val", "first-sentence-concat"
    )
    samples = [dataset[i] for i in range(len(dataset))]
    targets = [int(s["masks"].sum()) for s in samples]
    kept = [H * W - int(s["queries"][0]["ignore_mask"].sum()) for s in samples]
    assert metrics["cIoU"] == pytest.approx(100 * sum(targets) / sum(kept))
    assert metrics["gIoU_long"] == pytest.approx(
        100 * np.mean([t / k for t, k in zip(targets[1:], kept[1:])]), abs=1e-6
    )
