"""The one mask -> box and mask -> COCO RLE of `flmm.masks`, on small hand-made masks."""

from __future__ import annotations

import json

import numpy as np
import torch
from pycocotools import mask as mask_utils

from flmm.masks import box_xywh, mask_box, mask_boxes, mask_rle


def block(h: int, w: int, top: int, left: int, rows: int, cols: int) -> np.ndarray:
    """A `(h, w)` bool mask with a rows x cols block of True at (top, left)."""
    mask = np.zeros((h, w), dtype=bool)
    mask[top : top + rows, left : left + cols] = True
    return mask


def test_box_is_x0_y0_x1_y1_with_exclusive_max_edges():
    assert mask_box(block(40, 64, 5, 20, 5, 10)) == [20, 5, 30, 10]


def test_box_of_an_empty_mask_is_none():
    assert mask_box(np.zeros((4, 6), dtype=bool)) is None


def test_box_of_one_pixel_is_one_pixel_wide_and_high():
    assert mask_box(block(5, 7, 3, 2, 1, 1)) == [2, 3, 3, 4]


def test_numpy_and_torch_masks_give_the_same_box():
    mask = block(9, 12, 1, 4, 6, 3)
    assert mask_box(torch.from_numpy(mask)) == mask_box(mask) == [4, 1, 7, 7]


def test_nonzero_pixels_of_any_dtype_are_inside():
    assert mask_box(block(6, 6, 2, 1, 2, 3).astype(np.uint8) * 255) == [1, 2, 4, 4]


def test_batched_boxes_are_int64_with_zeros_for_an_empty_mask():
    masks = torch.from_numpy(np.stack([block(6, 9, 2, 3, 3, 4), np.zeros((6, 9), dtype=bool)]))
    boxes = mask_boxes(masks)
    assert boxes.dtype == torch.int64
    assert boxes.tolist() == [[3, 2, 7, 5], [0, 0, 0, 0]]


def test_box_xywh_is_the_coco_box_in_floats():
    assert box_xywh([20, 5, 30, 10]) == [20.0, 5.0, 10.0, 5.0]


def test_rle_round_trips_through_pycocotools():
    mask = block(7, 11, 2, 3, 4, 5) | block(7, 11, 0, 9, 7, 1)
    assert np.array_equal(mask_utils.decode(mask_rle(mask)), mask)


def test_rle_of_numpy_and_torch_masks_is_the_same():
    mask = block(5, 8, 1, 2, 3, 3)
    assert mask_rle(torch.from_numpy(mask)) == mask_rle(mask)


def test_rle_is_json_ready():
    rle = mask_rle(block(5, 8, 1, 2, 3, 3))
    assert json.loads(json.dumps(rle)) == rle == {"size": [5, 8], "counts": rle["counts"]}
    assert isinstance(rle["counts"], str)
