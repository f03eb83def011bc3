"""Read RefCOCO, RefCOCO+ and RefCOCOg from their real on-disk formats (DESIGN.md §3).

`DATA_ROOT/coco/<dataset>/refs(unc|umd).p` lists referring expressions per annotated object;
`instances.json` beside it holds the images and the object masks (polygons, or RLE for crowd
objects), kept as read: `flmm.data.coco_masks.decode_segmentation` checks and decodes one at the image's
original size when a sample is built.
"""

from __future__ import annotations

import math
import reprlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from flmm.data.annotation_fields import describe
from flmm.data.safe_pickle import load_plain_json, load_plain_pickle
from flmm.data.skips import SkipBudget
from flmm.errors import DataError

# dataset name -> (folder under DATA_ROOT/coco, refs file, splits)
REFER_DATASETS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "refcoco": ("refcoco", "refs(unc).p", ("train", "val", "testA", "testB")),
    "refcoco+": ("refcoco+", "refs(unc).p", ("train", "val", "testA", "testB")),
    "refcocog": ("refcocog", "refs(umd).p", ("train", "val", "test")),
}
RES_IMAGE_DIR = "train2014"


@dataclass(frozen=True)
class ImageInfo:
    """One image of instances.json: its id, path on disk and size at original resolution."""

    image_id: int
    path: Path
    height: int
    width: int


@dataclass(frozen=True)
class ReferredObject:
    """One ref: an annotated object with its referring expressions (at least one, none empty)."""

    ref_id: int
    ann_id: int
    image_id: int
    category_id: int
    split: str
    sentences: tuple[str, ...]
    sent_ids: tuple[int, ...]
    segmentation: object
    bbox: tuple[float, float, float, float]


@dataclass
class ReferSplit:
    """The refs of one dataset split, with the images they point at."""

    dataset: str
    split: str
    refs_path: Path
    images: dict[int, ImageInfo]
    objects: list[ReferredObject]

    def objects_by_image(self) -> dict[int, list[ReferredObject]]:
        """Image id -> its referred objects, in refs-file order (images in first-seen order)."""
        grouped: dict[int, list[ReferredObject]] = defaultdict(list)
        for obj in self.objects:
            grouped[obj.image_id].append(obj)
        return dict(grouped)


def refer_paths(root: str | Path, dataset: str) -> tuple[Path, Path]:
    """Return (refs pickle, instances.json) of `dataset` under the data root."""
    if dataset not in REFER_DATASETS:
        raise DataError(f"unknown RES dataset '{dataset}'; expected one of {sorted(REFER_DATASETS)}")
    folder, refs_name, _ = REFER_DATASETS[dataset]
    base = Path(root) / "coco" / folder
    return base / refs_name, base / "instances.json"


def _field(record: dict, key: str, where: str) -> object:
    if key not in record:
        raise DataError(f"{where}: field '{key}' is missing")
    return record[key]


def _int_field(record: dict, key: str, where: str) -> int:
    """`record[key]` as an int: an int, an integral float or a string of digits, nothing else."""
    value = _field(record, key, where)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass  # reported below, with the other wrong types
    raise DataError(f"{where}: field '{key}' should be an integer, found {describe(value)}")


def _str_field(record: dict, key: str, where: str) -> str:
    value = _field(record, key, where)
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{key}' should be a string, found {describe(value)}")
    return value


def _list_field(record: object, key: str, where: str) -> list:
    if not isinstance(record, dict):
        raise DataError(f"{where}: should be a JSON object, found {type(record).__name__}")
    value = _field(record, key, where)
    if not isinstance(value, list):
        raise DataError(f"{where}: field '{key}' should be a list, found {type(value).__name__}")
    return value


def _image_info(im: object, image_dir: Path, where: str) -> ImageInfo:
    if not isinstance(im, dict):
        raise DataError(f"{where}: should be an object, found {describe(im)}")
    height, width = _int_field(im, "height", where), _int_field(im, "width", where)
    if height <= 0 or width <= 0:
        raise DataError(f"{where}: image size {height}x{width} (HxW) is not positive")
    return ImageInfo(
        _int_field(im, "id", where), image_dir / _str_field(im, "file_name", where), height, width
    )


def _read_instances(path: Path, image_dir: Path) -> tuple[dict[int, ImageInfo], dict[int, dict]]:
    """Images (id -> ImageInfo) and annotations (id -> the raw annotation) of an instances.json.

    A malformed image or annotation entry is an error naming its index: the file as a whole is suspect.
    """
    instances = load_plain_json(path, "COCO instances.json of this dataset")
    images = {}
    for i, im in enumerate(_list_field(instances, "images", str(path))):
        info = _image_info(im, image_dir, f"{path}: images[{i}]")
        images[info.image_id] = info
    anns = {}
    for i, ann in enumerate(_list_field(instances, "annotations", str(path))):
        if not isinstance(ann, dict):
            raise DataError(f"{path}: annotations[{i}] should be an object, found {describe(ann)}")
        anns[_int_field(ann, "id", f"{path}: annotations[{i}]")] = ann
    return images, anns


def _checked_refs(raw_refs: object, refs_path: Path) -> list[dict]:
    """The refs of a refs file, each a dict with a string `split`; anything else is not a refs file.

    A ref without a usable split cannot even be counted as a skip of the right split, so it is an error.
    """
    if not isinstance(raw_refs, list):
        raise DataError(f"{refs_path}: expected a list of refs, found {type(raw_refs).__name__}")
    for i, ref in enumerate(raw_refs):
        if not isinstance(ref, dict):
            raise DataError(f"{refs_path}: ref #{i} should be a dict, found {describe(ref)}")
        _str_field(ref, "split", f"{refs_path}: ref #{i} (ref_id {reprlib.repr(ref.get('ref_id', '?'))})")
    return raw_refs


def load_refer_split(
    root: str | Path, dataset: str, split: str, max_skip_fraction: float = 0.0
) -> ReferSplit:
    """Load the refs of one split of `dataset` ("refcoco", "refcoco+" or "refcocog").

    Refs with a missing or mistyped field, whose ann_id is not in instances.json, whose image is missing
    from instances.json or with an empty sentence are skipped and counted (see `SkipBudget`); the image
    files themselves are read later, when a sample is built.
    """
    refs_path, instances_path = refer_paths(root, dataset)
    splits = REFER_DATASETS[dataset][2]
    if split not in splits:
        raise DataError(f"{dataset} has splits {list(splits)}, not '{split}'")
    raw_refs = _checked_refs(load_plain_pickle(refs_path), refs_path)
    images, anns = _read_instances(instances_path, Path(root) / "coco" / RES_IMAGE_DIR)

    in_split = [(i, r) for i, r in enumerate(raw_refs) if r["split"] == split]
    budget = SkipBudget(f"{dataset}:{split} ({refs_path})", len(in_split), max_skip_fraction)
    objects = []
    for index, ref in in_split:
        obj = _parse_ref(index, ref, refs_path, anns, images, budget)
        if obj is not None:
            objects.append(obj)
    used_images = {o.image_id for o in objects}
    return ReferSplit(dataset, split, refs_path, {i: images[i] for i in used_images}, objects)


def _sentences(ref: dict, where: str) -> tuple[list[str], list[int]]:
    """The stripped texts and the ids of a ref's sentences."""
    raw = _field(ref, "sentences", where)
    if not isinstance(raw, (list, tuple)):
        raise DataError(f"{where}: field 'sentences' should be a list of dicts, found {describe(raw)}")
    texts, ids = [], []
    for k, sentence in enumerate(raw):
        at = f"{where}: sentences[{k}]"
        if not isinstance(sentence, dict):
            raise DataError(f"{at} should be a dict, found {describe(sentence)}")
        texts.append(_str_field(sentence, "sent", at).strip())
        ids.append(_int_field(sentence, "sent_id", at))
    return texts, ids


def _annotation_fields(ann: dict, where: str) -> tuple[object, tuple[float, float, float, float]]:
    """(segmentation, bbox) of an annotation; the segmentation itself is checked when it is decoded."""
    segmentation = _field(ann, "segmentation", where)
    if not isinstance(segmentation, (list, dict)):
        raise DataError(
            f"{where}: field 'segmentation' should be polygons or an RLE, found {describe(segmentation)}"
        )
    bbox = _field(ann, "bbox", where)
    if not (
        isinstance(bbox, list)
        and len(bbox) == 4
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)
    ):
        raise DataError(f"{where}: field 'bbox' should be 4 numbers [x, y, w, h], found {describe(bbox)}")
    return segmentation, tuple(float(v) for v in bbox)


def _parse_ref(
    index: int,
    ref: dict,
    refs_path: Path,
    anns: dict[int, dict],
    images: dict[int, ImageInfo],
    budget: SkipBudget,
) -> ReferredObject | None:
    try:
        where = f"{refs_path}: ref #{index} (ref_id {reprlib.repr(ref.get('ref_id', '?'))})"
        ref_id, ann_id = _int_field(ref, "ref_id", where), _int_field(ref, "ann_id", where)
        image_id = _int_field(ref, "image_id", where)
        sentences, sent_ids = _sentences(ref, where)
        where = f"{refs_path}: ref_id {ref_id} (ann_id {ann_id}, image_id {image_id})"
        if ann_id not in anns:
            raise DataError(f"{where}: ann_id {ann_id} is not in instances.json")
        if image_id not in images:
            raise DataError(f"{where}: image_id {image_id} is not in instances.json")
        if not sentences:
            raise DataError(f"{where}: empty sentence list")
        blank = [f"sentences[{k}] (sent_id {sent_ids[k]})" for k, s in enumerate(sentences) if not s]
        if blank:
            raise DataError(f"{where}: empty sentence: {', '.join(blank)} is empty or whitespace only")
        ann = anns[ann_id]
        segmentation, bbox = _annotation_fields(
            ann, f"{refs_path.parent / 'instances.json'}: ann_id {ann_id}"
        )
        category_id = _int_field(ref if "category_id" in ref else ann, "category_id", where)
    except DataError as exc:
        budget.skip(str(exc))
        return None
    return ReferredObject(
        ref_id=ref_id,
        ann_id=ann_id,
        image_id=image_id,
        category_id=category_id,
        split=ref["split"],
        sentences=tuple(sentences),
        sent_ids=tuple(sent_ids),
        segmentation=segmentation,
        bbox=bbox,
    )
