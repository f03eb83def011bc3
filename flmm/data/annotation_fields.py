"""Checked reads of annotation records (GranD-f's GCG files, `flmm.data.gcg`): typed fields, caption spans,
COCO RLEs and the masks they decode to, image sizes and ids. A malformed value is a `DataError` naming
`where` it is (file, record, field), never a traceback from inside pycocotools.
"""

from __future__ import annotations

import reprlib
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from flmm.errors import DataError


def typed_fields(record: object, where: str, types: dict[str, type]) -> list:
    """The values of `record`'s fields named in `types`, in that order, each checked to be of its type."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: should be an object, found {type(record).__name__} {reprlib.repr(record)}")
    values = []
    for key, kind in types.items():
        if key not in record:
            raise DataError(f"{where}: field {key!r} is missing")
        if not isinstance(record[key], kind) or isinstance(record[key], bool):
            raise DataError(
                f"{where}: field {key!r} should be {kind.__name__}, found {reprlib.repr(record[key])}"
            )
        values.append(record[key])
    return values


def caption_span(value: object, caption: str, where: str) -> tuple[int, int]:
    """`value` as a `(start, end)` character span inside `caption`."""
    ok = (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    )
    if not ok or not 0 <= value[0] < value[1] <= len(caption):
        raise DataError(
            f"{where}: should be [start, end] with 0 <= start < end <= {len(caption)} (the caption's "
            f"length), found {reprlib.repr(value)}"
        )
    return int(value[0]), int(value[1])


def checked_rle(value: object, where: str) -> dict:
    """A COCO RLE ready for `mask_utils.decode` (compressed, counts as bytes)."""
    if not isinstance(value, dict) or "counts" not in value or "size" not in value:
        raise DataError(
            f"{where}: should be a COCO RLE {{'size': [H, W], 'counts': ...}}, found {reprlib.repr(value)}"
        )
    size, counts = value["size"], value["counts"]
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size)):
        raise DataError(f"{where}: field 'size' should be [H, W], found {reprlib.repr(size)}")
    if isinstance(counts, list):
        return mask_utils.frPyObjects(value, *size)
    if not isinstance(counts, str | bytes):
        raise DataError(f"{where}: field 'counts' should be a string or a list, found {reprlib.repr(counts)}")
    return {"size": size, "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def decode_union(rles: list[dict], hw: tuple[int, int], where: str) -> np.ndarray:
    """The union of `rles` (each of size `hw`) as one `(H, W)` bool mask."""
    mask = np.zeros(hw, dtype=bool)
    for rle in rles:
        if tuple(rle["size"]) != hw:
            raise DataError(f"{where}: RLE of size {rle['size']} in an image of size {list(hw)}")
        try:
            mask |= mask_utils.decode(rle).astype(bool)
        except (ValueError, TypeError) as exc:
            raise DataError(f"{where}: the RLE cannot be decoded ({exc})") from None
    return mask


def stack_masks(masks: list[np.ndarray], hw: tuple[int, int]) -> np.ndarray:
    """`(P, H, W)` bool from P masks `(H, W)`; `(0, H, W)` for none."""
    return np.stack(masks) if masks else np.zeros((0, *hw), dtype=bool)


def image_hw(path: Path, where: str) -> tuple[int, int]:
    """`(H, W)` of the image file at `path`, read from its header."""
    try:
        with Image.open(path) as img:
            return img.height, img.width
    except OSError as exc:
        raise DataError(f"{where}: cannot read the image {path} ({exc})") from None


def group_by_image(
    annotations: list, path: Path, keep=lambda ann: True
) -> dict[object, list[tuple[int, dict]]]:
    """COCO `annotations` grouped by checked `image_id`: `{image_id: [(index in the file, annotation)]}`,
    only those for which `keep(annotation)`."""
    by_image: dict[object, list] = {}
    for i, ann in enumerate(annotations):
        where = f"{path}: annotation #{i}"
        (image_id,) = typed_fields(ann, where, {"image_id": object})
        if keep(ann):
            by_image.setdefault(checked_id(image_id, f"{where}: field 'image_id'"), []).append((i, ann))
    return by_image


def checked_id(value: object, where: str) -> str | int:
    """`value` as an image id: a string or an integer (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise DataError(f"{where}: should be a string or an integer id, found {reprlib.repr(value)}")
    return value
