"""Read RefCOCO, RefCOCO+ and RefCOCOg from their real on-disk formats (DESIGN.md §3).

`DATA_ROOT/coco/<dataset>/refs(unc|umd).p` lists referring expressions per annotated object;
`instances.json` beside it holds the images and the object masks (polygons, or RLE for crowd
objects). Masks are decoded with pycocotools at the image's original size.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from flmm.data.safe_pickle import load_plain_pickle
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


def _read_instances(path: Path, image_dir: Path) -> tuple[dict[int, ImageInfo], dict[int, dict]]:
    if not path.is_file():
        raise DataError(f"{path}: file not found (expected the COCO instances.json of this dataset)")
    try:
        with path.open(encoding="utf-8") as f:
            instances = json.load(f)
        images = {
            int(im["id"]): ImageInfo(
                int(im["id"]), image_dir / im["file_name"], int(im["height"]), int(im["width"])
            )
            for im in instances["images"]
        }
        anns = {int(a["id"]): a for a in instances["annotations"]}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: not a COCO instances file ({type(exc).__name__}: {exc})") from exc
    return images, anns


def load_refer_split(
    root: str | Path, dataset: str, split: str, max_skip_fraction: float = 0.0
) -> ReferSplit:
    """Load the refs of one split of `dataset` ("refcoco", "refcoco+" or "refcocog").

    Refs whose ann_id is not in instances.json, whose image is missing from instances.json or whose
    sentence list is empty are skipped and counted (see `SkipBudget`); the image files themselves are
    read later, when a sample is built.
    """
    refs_path, instances_path = refer_paths(root, dataset)
    splits = REFER_DATASETS[dataset][2]
    if split not in splits:
        raise DataError(f"{dataset} has splits {list(splits)}, not '{split}'")
    raw_refs = load_plain_pickle(refs_path)
    if not isinstance(raw_refs, list):
        raise DataError(f"{refs_path}: expected a list of refs, found {type(raw_refs).__name__}")
    images, anns = _read_instances(instances_path, Path(root) / "coco" / RES_IMAGE_DIR)

    in_split = [r for r in raw_refs if isinstance(r, dict) and r.get("split") == split]
    budget = SkipBudget(f"{dataset}:{split} ({refs_path})", len(in_split), max_skip_fraction)
    objects = []
    for ref in in_split:
        obj = _parse_ref(ref, refs_path, anns, images, budget)
        if obj is not None:
            objects.append(obj)
    used_images = {o.image_id for o in objects}
    return ReferSplit(dataset, split, refs_path, {i: images[i] for i in used_images}, objects)


def _parse_ref(
    ref: dict, refs_path: Path, anns: dict[int, dict], images: dict[int, ImageInfo], budget: SkipBudget
) -> ReferredObject | None:
    try:
        ref_id, ann_id, image_id = int(ref["ref_id"]), int(ref["ann_id"]), int(ref["image_id"])
        sentences = [str(s["sent"]).strip() for s in ref["sentences"]]
        sent_ids = [int(s["sent_id"]) for s in ref["sentences"]]
    except (KeyError, TypeError, ValueError) as exc:
        budget.skip(f"{refs_path}: malformed ref {ref.get('ref_id', '?')}: missing or bad field {exc}")
        return None
    where = f"{refs_path}: ref_id {ref_id} (ann_id {ann_id}, image_id {image_id})"
    if ann_id not in anns:
        budget.skip(f"{where}: ann_id {ann_id} is not in instances.json")
        return None
    if image_id not in images:
        budget.skip(f"{where}: image_id {image_id} is not in instances.json")
        return None
    if not sentences or not all(sentences):
        budget.skip(f"{where}: empty sentence list or empty sentence")
        return None
    ann = anns[ann_id]
    return ReferredObject(
        ref_id=ref_id,
        ann_id=ann_id,
        image_id=image_id,
        category_id=int(ref.get("category_id", ann.get("category_id", -1))),
        split=str(ref["split"]),
        sentences=tuple(sentences),
        sent_ids=tuple(sent_ids),
        segmentation=ann["segmentation"],
        bbox=tuple(float(v) for v in ann["bbox"]),
    )


def decode_segmentation(segmentation: object, height: int, width: int, where: str) -> np.ndarray:
    """Decode a COCO segmentation (polygons, uncompressed or compressed RLE) to a `(H, W)` bool mask."""
    try:
        if isinstance(segmentation, list):
            polygons = [p for p in segmentation if len(p) >= 6]
            if not polygons:
                raise ValueError("no polygon with at least three points")
            rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
        elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
            rle = mask_utils.frPyObjects(segmentation, height, width)
        elif isinstance(segmentation, dict):
            rle = dict(segmentation)
            if isinstance(rle["counts"], str):
                rle["counts"] = rle["counts"].encode("ascii")
        else:
            raise ValueError(f"unsupported segmentation of type {type(segmentation).__name__}")
        if list(rle["size"]) != [height, width]:
            raise ValueError(f"RLE size {list(rle['size'])} differs from the image size {[height, width]}")
        return mask_utils.decode(rle).astype(bool)
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{where}: cannot decode segmentation ({exc})") from exc
