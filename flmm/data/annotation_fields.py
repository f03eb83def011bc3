"""Checked reads of annotation records (GranD-f's GCG files, `flmm.data.gcg`; RefCOCO's, `flmm.data.refcoco`):
typed fields, caption spans, image sizes and ids, and `describe` for the values error messages quote. A
malformed value is a `DataError` naming `where` it is (file, record, field). Masks: `flmm.data.coco_masks`.
"""

from __future__ import annotations

import reprlib
from pathlib import Path

from PIL import Image

from flmm.errors import DataError


def describe(value: object) -> str:
    """`value` as error messages quote it: its type and a shortened repr, e.g. `str 'tall'`."""
    return f"{type(value).__name__} {reprlib.repr(value)}"


def typed_fields(record: object, where: str, types: dict[str, type]) -> list:
    """The values of `record`'s fields named in `types`, in that order, each checked to be of its type."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: should be an object, found {describe(record)}")
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
