"""COCO segmentations (polygons, uncompressed or compressed RLE) checked and decoded to bool masks: the one
place the data readers (`flmm.data.refcoco`, `flmm.data.gcg`) turn annotation masks into pixels.

Everything pycocotools would trip over is checked before it sees the value, because it does not fail
cleanly: it hangs on non-finite polygon coordinates, and returns uninitialised memory for RLE counts that do
not cover exactly the image's H*W pixels (negative runs, too few or too many). A bad segmentation is a
`DataError` naming `where` it is (file, record, field).
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

from flmm.data.annotation_fields import describe
from flmm.errors import DataError

# How far (pixels) polygon coordinates may lie outside the image: annotation tools round and click on
# the border, and pycocotools clips them; further out, the polygon was drawn for another image size.
POLYGON_SLACK_PX = 2.0


def decode_segmentation(segmentation: object, height: int, width: int, where: str) -> np.ndarray:
    """Decode a COCO segmentation (polygons, uncompressed or compressed RLE) to a `(H, W)` bool mask.

    A mask that covers no pixel is an error too: its object cannot be grounded.
    """
    if isinstance(segmentation, list):
        rle = polygons_rle(segmentation, (height, width), where)
    elif isinstance(segmentation, dict):
        rle = checked_rle(segmentation, where, (height, width))
    else:
        raise DataError(f"{where}: segmentation should be polygons or an RLE, found {describe(segmentation)}")
    mask = mask_utils.decode(rle).astype(bool)
    if not mask.any():
        raise DataError(f"{where}: the segmentation covers no pixel of its {height}x{width} (HxW) image")
    return mask


def decode_union(rles: list[dict], hw: tuple[int, int], where: str) -> np.ndarray:
    """The union of `rles` (from `checked_rle` or `polygons_rle`, each of size `hw`) as one `(H, W)` bool
    mask; `hw` is the image's size, which the RLEs were not checked against when it was not yet known."""
    mask = np.zeros(hw, dtype=bool)
    for rle in rles:
        if tuple(rle["size"]) != tuple(hw):
            raise DataError(f"{where}: RLE of size {rle['size']} in an image of size {list(hw)}")
        mask |= mask_utils.decode(rle).astype(bool)
    return mask


def stack_masks(masks: list[np.ndarray], hw: tuple[int, int]) -> np.ndarray:
    """`(P, H, W)` bool from P masks `(H, W)`; `(0, H, W)` for none."""
    return np.stack(masks) if masks else np.zeros((0, *hw), dtype=bool)


def polygons_rle(polygons: list, hw: tuple[int, int], where: str) -> dict:
    """Merged pycocotools RLE of COCO polygons `[[x0, y0, x1, y1, ...], ...]` in an image of size `hw`
    `(H, W)`, after checking that their coordinates are finite numbers within the image."""
    height, width = hw
    # Fewer than 3 points is no area; pycocotools would even read a 4-number list as a box.
    checked = [
        _polygon(p, height, width, f"{where}: polygon {k}")
        for k, p in enumerate(polygons)
        if not isinstance(p, list) or len(p) >= 6
    ]
    if not checked:
        raise DataError(f"{where}: cannot decode segmentation: no polygon with at least three points")
    return mask_utils.merge(mask_utils.frPyObjects(checked, height, width))


def _polygon(polygon: object, height: int, width: int, where: str) -> list[float]:
    try:
        coords = np.asarray(polygon, dtype=np.float64)
    except (TypeError, ValueError):
        coords = None
    if coords is None or coords.ndim != 1 or len(coords) % 2:
        raise DataError(f"{where}: should be a flat list of x, y numbers, found {describe(polygon)}")
    if not np.isfinite(coords).all():
        raise DataError(f"{where}: has a coordinate that is not a finite number")
    for axis, name, side in ((0, "x", width), (1, "y", height)):
        values = coords[axis::2]
        if values.min() < -POLYGON_SLACK_PX or values.max() > side + POLYGON_SLACK_PX:
            raise DataError(
                f"{where}: {name} spans {values.min():g}..{values.max():g}, beyond the image's "
                f"{height}x{width} (HxW): drawn for another image size?"
            )
    return coords.tolist()


def checked_rle(value: object, where: str, hw: tuple[int, int] | None = None) -> dict:
    """A pycocotools RLE `{'size': [H, W], 'counts': bytes}` (compressed) of a COCO RLE whose counts, an
    uncompressed list of run lengths or a compressed string, cover exactly its H*W pixels.

    `hw` is the image's `(H, W)` when known, and the RLE's `size` must be it; without it the RLE's own
    `size` is taken, checked to be two positive integers (`decode_union` compares it to the image later).
    """
    if not isinstance(value, dict) or "counts" not in value or "size" not in value:
        raise DataError(
            f"{where}: should be a COCO RLE {{'size': [H, W], 'counts': ...}}, found {describe(value)}"
        )
    size, counts = value["size"], value["counts"]
    if hw is not None and (not isinstance(size, list | tuple) or list(size) != list(hw)):
        raise DataError(f"{where}: RLE size {describe(size)} differs from the image size {list(hw)}")
    if not (
        isinstance(size, list | tuple)
        and len(size) == 2
        and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)
    ):
        raise DataError(
            f"{where}: RLE field 'size' should be [H, W], two positive integers, found {describe(size)}"
        )
    height, width = size
    if isinstance(counts, list):
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
            raise DataError(f"{where}: RLE counts should be non-negative integers, found {describe(counts)}")
        covered = sum(counts)
        rle = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    elif isinstance(counts, str | bytes):
        encoded = counts.encode("utf-8") if isinstance(counts, str) else counts
        covered = sum(_compressed_counts(encoded, where))
        rle = {"size": [height, width], "counts": encoded}
    else:
        raise DataError(f"{where}: RLE field 'counts' should be a list or a string, found {describe(counts)}")
    if covered != height * width:
        raise DataError(
            f"{where}: RLE counts cover {covered} pixels but the {height}x{width} image has {height * width}"
        )
    return rle


def _compressed_counts(encoded: bytes, where: str) -> list[int]:
    """Decode COCO's compressed RLE string (pycocotools' rleFrString): runs of 5-bit groups in characters
    48..111, 0x20 = more groups follow, 0x10 in the last group = negative; from the third run on, each is
    stored as the difference to the run two before."""
    counts, p = [], 0
    while p < len(encoded):
        value, shift, more = 0, 0, True
        while more:
            if p >= len(encoded) or not 0 <= encoded[p] - 48 < 64:
                raise DataError(f"{where}: compressed RLE counts are malformed at character {p}")
            group = encoded[p] - 48
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            p, shift = p + 1, shift + 5
            if not more and group & 0x10:
                value |= -1 << shift
        if len(counts) > 2:
            value += counts[-2]
        if value < 0:
            raise DataError(f"{where}: compressed RLE counts decode to a negative run")
        counts.append(value)
    return counts
