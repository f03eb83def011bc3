"""Broken files and records are clear errors naming file and record, or counted skips under a cap."""

from __future__ import annotations

import json
import pickle
import re

import numpy as np
import pytest
from PIL import Image

from flmm.config import load_config
from flmm.data.collate import collate_grounding, has_samples
from flmm.data.datasets import PngDataset, RefCocoDataset
from flmm.data.splits import build_split_dataset
from flmm.errors import DataError

IMAGE_101 = "coco/train2014/COCO_train2014_000000000101.jpg"


def _cfg(root, max_skip_fraction):
    return load_config(None, [f"data.root={root}", f"data.max_skip_fraction={max_skip_fraction}"]).data


def _every_sample(dataset):
    return [dataset[i] for i in range(len(dataset))]


def _skip_reasons(dataset) -> list[str]:
    """Why each broken record of `dataset` was skipped, as its samples report it."""
    return [record.reason for sample in _every_sample(dataset) for record in sample["skipped"]]


def _edit_refs(root, name, edit):
    path = root / "coco" / "refcoco" / name
    refs = pickle.loads(path.read_bytes())
    edit(refs)
    path.write_bytes(pickle.dumps(refs))


def test_missing_image_without_skip_budget_names_the_file_before_any_sample(writable_real_format):
    (writable_real_format / IMAGE_101).unlink()
    with pytest.raises(DataError, match=r"COCO_train2014_000000000101\.jpg: image file not found"):
        build_split_dataset(_cfg(writable_real_format, 0), "refcoco:train", "all-sentences")


def test_missing_image_is_a_counted_skip_within_the_budget(writable_real_format):
    (writable_real_format / IMAGE_101).unlink()
    dataset = build_split_dataset(_cfg(writable_real_format, 0.5), "refcoco:train", "all-sentences")
    samples = _every_sample(dataset)
    assert all(s["image_id"] != 101 for s in samples)
    lost = sum(len(o.sentences) for o in dataset.refer.objects if o.image_id == 101)
    assert lost > 0
    assert len(samples) + lost == sum(len(o.sentences) for o in dataset.refer.objects)
    assert len(dataset.load_skips) == lost


def test_corrupt_image_in_training_is_replaced_once_and_the_epoch_goes_on(writable_real_format):
    path = writable_real_format / IMAGE_101
    path.write_bytes(b"not a jpeg at all")
    dataset = build_split_dataset(_cfg(writable_real_format, 0.5), "refcoco:train", "train")
    samples = _every_sample(dataset)
    assert len(samples) == len(dataset) and all("image" in s for s in samples)
    assert all(s["image_id"] != 101 for s in samples)
    [skipped] = [record for s in samples for record in s["skipped"]]
    assert skipped.dataset == "refcoco:train (train)" and "corrupt or truncated image" in skipped.reason


def test_corrupt_image_in_evaluation_is_dropped_not_replaced(writable_real_format):
    (writable_real_format / IMAGE_101).write_bytes(b"not a jpeg at all")
    dataset = build_split_dataset(_cfg(writable_real_format, 0.5), "refcoco:train", "all-sentences")
    samples = _every_sample(dataset)
    kept = [s for s in samples if "image" in s]
    broken = [s for s in samples if "image" not in s]
    query_ids = [q["query_id"] for s in kept for q in s["queries"]]
    assert len(query_ids) == len(set(query_ids)) == len(dataset) - len(broken)
    assert len(broken) == sum(len(o.sentences) for o in dataset.refer.objects if o.image_id == 101)
    batch = collate_grounding(samples)
    assert len(batch["queries"]) == len(kept) and len(batch["skipped"]) == len(broken)
    assert not has_samples(collate_grounding(broken))


def test_truncated_image_is_a_clear_error(writable_real_format):
    path = writable_real_format / IMAGE_101
    path.write_bytes(path.read_bytes()[:300])
    dataset = build_split_dataset(_cfg(writable_real_format, 0), "refcoco:train", "all-sentences")
    reasons = _skip_reasons(dataset)
    assert reasons and all(re.search(r"000000000101\.jpg: corrupt or truncated image", r) for r in reasons)


def test_image_of_another_size_than_annotated_is_refused(writable_real_format):
    Image.new("RGB", (10, 10)).save(writable_real_format / IMAGE_101)
    dataset = build_split_dataset(_cfg(writable_real_format, 0), "refcoco:train", "all-sentences")
    reasons = _skip_reasons(dataset)
    assert reasons and all("annotation says 640x480" in r for r in reasons)


def test_ref_with_unknown_ann_id_is_skipped_and_counted(writable_real_format):
    def break_first_train_ref(refs):
        next(r for r in refs if r["split"] == "train")["ann_id"] = 999999

    _edit_refs(writable_real_format, "refs(unc).p", break_first_train_ref)
    dataset = RefCocoDataset(writable_real_format, "refcoco", "train", max_skip_fraction=0.5)
    assert 999999 not in {o.ann_id for o in dataset.refer.objects}
    with pytest.raises(
        DataError, match=r"refs\(unc\)\.p: ref_id \d+ \(ann_id 999999.*not in instances\.json"
    ):
        RefCocoDataset(writable_real_format, "refcoco", "train", max_skip_fraction=0.0)


def test_ref_with_empty_sentence_list_is_skipped_and_counted(writable_real_format):
    def empty_sentences(refs):
        next(r for r in refs if r["split"] == "val")["sentences"] = []

    _edit_refs(writable_real_format, "refs(unc).p", empty_sentences)
    with pytest.raises(DataError, match="empty sentence list"):
        RefCocoDataset(writable_real_format, "refcoco", "val", max_skip_fraction=0.0)
    lenient = RefCocoDataset(writable_real_format, "refcoco", "val", max_skip_fraction=0.5)
    assert all(o.sentences for o in lenient.refer.objects)


def _edit_narratives(root, edit):
    path = root / "coco/annotations/png_coco_val2017.json"
    narratives = json.loads(path.read_text())
    edit(narratives)
    path.write_text(json.dumps(narratives))


def test_png_segment_absent_from_segments_info_is_skipped_and_counted(writable_real_format):
    _edit_narratives(writable_real_format, lambda n: n[1]["segments"][2].update(segment_ids=["4242"]))
    with pytest.raises(DataError, match=r"narrative #1 .*segment ids \[4242\] absent from segments_info"):
        PngDataset(writable_real_format, "val2017", max_skip_fraction=0.0)
    assert len(PngDataset(writable_real_format, "val2017", max_skip_fraction=0.5)) == 3


def test_png_segment_absent_from_the_panoptic_map_names_the_png(writable_real_format):
    path = writable_real_format / "coco/annotations/panoptic_val2017/000000000500.png"
    ids = np.asarray(Image.open(path).convert("RGB")).astype(np.int64)
    seg = ids[..., 0] + 256 * ids[..., 1] + 65536 * ids[..., 2]
    ids[seg == 3000003] = 0
    Image.fromarray(ids.astype(np.uint8)).save(path)
    dataset = PngDataset(writable_real_format, "val2017", max_skip_fraction=0.0)
    [reason] = [r.reason for r in dataset[0]["skipped"]]
    assert re.search(r"000000000500\.png: segment ids \[3000003\] .*no pixel", reason)


def test_missing_annotation_files_say_what_is_missing_and_where(tmp_path):
    with pytest.raises(DataError, match=r"refcocog.*missing .*refs\(umd\)\.p.*data\.root"):
        build_split_dataset(_cfg(tmp_path, 0), "refcocog:val", "all-sentences")


def test_split_names_are_checked(real_format_root):
    with pytest.raises(DataError, match=r"refcocog has splits \['train', 'val', 'test'\]"):
        build_split_dataset(_cfg(real_format_root, 0), "refcocog:testA", "all-sentences")
    with pytest.raises(DataError, match="must look like DATASET:SPLIT"):
        build_split_dataset(_cfg(real_format_root, 0), "refcoco", "all-sentences")
