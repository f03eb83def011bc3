"""GranD-f's GCG evaluation ground truth (`gcg:grandf_val`, `gcg:grandf_test`) on a hand-made fixture in
GLaMM's layout: `annotations/val_test/{split}_gcg_coco_caption_gt.json` (COCO captions with `labels`),
`{split}_gcg_coco_mask_gt.json` (COCO instances, RLE segmentations), images in `GranDf_HA_images/val_test`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flmm.data.gcg import gcg_split_paths, load_gcg_split
from flmm.errors import DataError
from tests.conftest import coco_rle

SIZES = {"sa_1": (6, 8), "sa_2": (5, 7), "sa_3": (6, 8)}  # (H, W) per image
CAPTION = "A dog sits next to a Dog on the grass."


def box(image_id: str, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    mask = np.zeros(SIZES[image_id], dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


# sa_1: three masks, labels out of caption order and one label repeated; sa_2: a single uncompressed RLE
MASKS = {
    "sa_1": [box("sa_1", 0, 4, 8, 6), box("sa_1", 0, 0, 3, 3), box("sa_1", 4, 0, 8, 3)],
    "sa_2": [box("sa_2", 1, 1, 6, 4)],
}
LABELS = {"sa_1": ["the grass", "a dog", "a dog"], "sa_2": ["a red kite"], "sa_3": []}
CAPTIONS = {"sa_1": CAPTION, "sa_2": "Someone flies a red kite.", "sa_3": "An empty beach."}


def write_split(root: Path, split: str, image_ids: list[str]) -> tuple[Path, Path]:
    """The two GT files of `split` as GLaMM publishes them, and the images they name."""
    ann = root / "GranDf/annotations/val_test"
    images = root / "GranDf/GranDf_HA_images/val_test"
    ann.mkdir(parents=True, exist_ok=True)
    images.mkdir(parents=True, exist_ok=True)
    for image_id in image_ids:
        h, w = SIZES[image_id]
        Image.new("RGB", (w, h), (30, 60, 90)).save(images / f"{image_id}.jpg")
    image_entries = [{"id": i, "height": SIZES[i][0], "width": SIZES[i][1]} for i in image_ids]
    caption_gt = {
        "info": {"description": "GranD-f GCG caption ground truth"},
        "images": image_entries,
        "annotations": [
            {"id": n, "image_id": i, "caption": CAPTIONS[i], "labels": LABELS[i]}
            for n, i in enumerate(image_ids)
        ],
    }
    mask_anns = []
    for image_id in image_ids:
        for mask in MASKS.get(image_id, []):
            segmentation = coco_rle(mask, compressed=image_id != "sa_2")
            area, bbox = int(mask.sum()), [0, 0, 1, 1]
            mask_anns.append(
                {
                    "id": len(mask_anns) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "segmentation": segmentation,
                    "area": area,
                    "bbox": bbox,
                    "iscrowd": 0,
                }
            )
    mask_gt = {
        "images": [{**e, "file_name": f"{e['id']}.jpg"} for e in image_entries],
        "annotations": mask_anns,
        "categories": [{"id": 1, "name": "object"}],
    }
    caption_path = ann / f"{split}_gcg_coco_caption_gt.json"
    mask_path = ann / f"{split}_gcg_coco_mask_gt.json"
    caption_path.write_text(json.dumps(caption_gt))
    mask_path.write_text(json.dumps(mask_gt))
    return caption_path, mask_path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    write_split(tmp_path, "val", ["sa_1", "sa_2", "sa_3"])
    write_split(tmp_path, "test", ["sa_2"])
    return tmp_path


def by_id(root: Path, split: str) -> dict:
    return {r.image_id: r for r in load_gcg_split(root, f"gcg:{split}")}


def test_val_records_are_the_caption_gt_images(root):
    records = load_gcg_split(root, "gcg:grandf_val")
    assert [r.image_id for r in records] == ["sa_1", "sa_2", "sa_3"]
    first = records[0]
    assert first.caption == CAPTION
    assert (
        first.image_path == root / "GranDf/GranDf_HA_images/val_test/sa_1.jpg" and first.image_path.is_file()
    )


def test_phrases_are_the_labels_with_their_caption_spans(root):
    record = by_id(root, "grandf_val")["sa_1"]
    # in caption order; the repeated label "a dog" takes its 1st, then its 2nd (case-insensitive) occurrence
    assert [(p.text, p.span) for p in record.phrases] == [
        ("A dog", (0, 5)),
        ("a Dog", (19, 24)),
        ("the grass", (28, 37)),
    ]


def test_masks_pair_with_the_labels_by_position(root):
    record = by_id(root, "grandf_val")["sa_1"]
    masks = record.masks()
    assert masks.dtype == bool and masks.shape == (3, *SIZES["sa_1"])
    grass, dog_1, dog_2 = MASKS["sa_1"]  # written in the order of the labels
    assert (masks[0] == dog_1).all() and (masks[1] == dog_2).all() and (masks[2] == grass).all()


def test_uncompressed_rle_counts_decode_to_the_written_pixels(root):
    record = by_id(root, "grandf_val")["sa_2"]
    assert [(p.text, p.span) for p in record.phrases] == [("a red kite", (14, 24))]
    masks = record.masks()
    assert masks.shape == (1, 5, 7) and (masks[0] == MASKS["sa_2"][0]).all()


def test_image_without_annotations_has_no_phrases(root):
    record = by_id(root, "grandf_val")["sa_3"]
    assert record.caption == "An empty beach." and record.phrases == ()
    assert record.masks().shape == (0, *SIZES["sa_3"])


def test_test_split_reads_its_own_files(root):
    ann, images, kind = gcg_split_paths(root, "gcg:grandf_test")
    assert ann == root / "GranDf/annotations/val_test/test_gcg_coco_caption_gt.json"
    assert images == root / "GranDf/GranDf_HA_images/val_test" and kind == "coco_gt"
    assert [r.image_id for r in load_gcg_split(root, "gcg:grandf_test")] == ["sa_2"]


def test_split_names_are_listed(tmp_path):
    with pytest.raises(DataError, match=r"'grandf_test'.*'grandf_train'.*'grandf_val'"):
        load_gcg_split(tmp_path, "gcg:grandf_eval")


def test_missing_label_field_names_the_file_and_field(tmp_path):
    caption_path, _ = write_split(tmp_path, "val", ["sa_1"])
    data = json.loads(caption_path.read_text())
    del data["annotations"][0]["labels"]
    caption_path.write_text(json.dumps(data))
    with pytest.raises(
        DataError,
        match=r"val_gcg_coco_caption_gt\.json: annotation #0 \(image 'sa_1'\): field 'labels' is missing",
    ):
        load_gcg_split(tmp_path, "gcg:grandf_val")


def _bad_counts(data: dict) -> None:
    data["annotations"][1]["segmentation"] = {"size": [6, 8], "counts": 7}


def _short_counts(data: dict) -> None:
    data["annotations"][1]["segmentation"] = {"size": [6, 8], "counts": [3, 2]}  # 5 of the 48 pixels


@pytest.mark.parametrize(
    "spoil, message",
    [
        (_bad_counts, r"val_gcg_coco_mask_gt\.json: annotation #1 .*field 'counts'"),
        (
            _short_counts,
            r"val_gcg_coco_mask_gt\.json: annotation #1 \(image 'sa_1'\): field 'segmentation': RLE counts "
            r"cover 5 pixels but the 6x8 image has 48",
        ),
        (
            lambda data: data["annotations"].pop(),
            r"field 'labels' has 3 phrases but .*mask_gt\.json has 2 masks",
        ),
    ],
    ids=["bad segmentation", "counts short of the image", "fewer masks than labels"],
)
def test_a_bad_mask_file_names_the_file_record_and_field(tmp_path, spoil, message):
    _, mask_path = write_split(tmp_path, "val", ["sa_1"])
    data = json.loads(mask_path.read_text())
    spoil(data)
    mask_path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=message):
        load_gcg_split(tmp_path, "gcg:grandf_val")


def test_label_not_in_the_caption_is_an_error(tmp_path):
    caption_path, _ = write_split(tmp_path, "val", ["sa_2"])
    data = json.loads(caption_path.read_text())
    data["annotations"][0]["labels"] = ["a blue kite"]
    caption_path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"field 'labels' item #0 'a blue kite' is not in the caption"):
        load_gcg_split(tmp_path, "gcg:grandf_val")


def test_missing_mask_gt_file_is_reported(tmp_path):
    _, mask_path = write_split(tmp_path, "val", ["sa_1"])
    mask_path.unlink()
    with pytest.raises(DataError, match=r"'gcg:grandf_val' not found: missing .*val_gcg_coco_mask_gt\.json"):
        load_gcg_split(tmp_path, "gcg:grandf_val")
