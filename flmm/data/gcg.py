"""Grounded conversation generation (GCG) splits: GranD-f's annotation JSONs as GLaMM publishes them, and the
synthetic world's PNG narratives as a GCG split.

A record is one image: its file, its caption and the caption's grounded phrases, each a `(start, end)`
character span of the caption with its mask (`GcgRecord.masks()` decodes them, `(P, H, W)` bool).

GranD-f files (GLaMM's `dataset/gcg_datasets/GranDf_gcg_ds.py`), under data.root as GLaMM lays them out:

- `groundings` (GranDf_HA_GCG_*.json, OpenPsgGCG_*.json): a list of
  `{"file_name", "caption", "groundings": {PHRASE: {"token_positives": [start, end], "rle_masks": [RLE]}}}`;
  a phrase's mask is the union of its RLEs (COCO RLE, `counts` compressed str or uncompressed list).
- `coco` (flickr_mergedGT_GCG_*.json): COCO layout, `images` carry `caption` (and id, file_name, height,
  width), `annotations` carry `image_id`, `tokens_positive` (a list of `[start, end]`; the first names the
  phrase, as GLaMM reads it) and `sam_mask` (RLE); `"ignore": true` annotations are left out.
- `refs` (RefCOCOg_GCG_*.json): a list of `{"img_file_name", "caption", "refs": [{"sentence",
  "segmentation": [polygon, ...]}]}`; a ref's span is where its sentence first occurs in the lower-cased
  caption (refs not in it are left out, as in GLaMM), its mask the union of its polygons.

GranD-f's evaluation ground truth (GLaMM's `eval/gcg/evaluate.py`), `gcg:grandf_val` and `gcg:grandf_test`:

- `coco_gt` ({val,test}_gcg_coco_caption_gt.json, its {val,test}_gcg_coco_mask_gt.json beside it): the caption
  GT's `images` (`id` = the file stem of `{id}.jpg` in GranDf_HA_images/val_test) are the split, its
  `annotations` carry `image_id`, `caption` and `labels` (the phrases; an image's first caption counts, as in
  GLaMM); the mask GT is COCO layout, `images` with `height`, `width`, `annotations` with `image_id` and
  `segmentation` (RLE). An image's k-th mask is its k-th label's (GLaMM pairs them by position); a label's
  span is where it occurs in the caption, case-insensitively (the k-th time for its k-th repeat).

Split names are `gcg:NAME` with NAME in `GCG_SPLITS`; `png:val2017` (or train2017) reads PNG narratives
(`flmm.data.png`) as GCG records: caption = narrative, phrases = its grounded utterances. Malformed input
is a `DataError` naming the file, the record and the field. Data code knows nothing of models.
"""

from __future__ import annotations

import re
import reprlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flmm.data.annotation_fields import caption_span, checked_id, group_by_image, image_hw, typed_fields
from flmm.data.coco_masks import checked_rle, decode_union, polygons_rle, stack_masks
from flmm.data.png import PNG_SPLITS, load_png_split, phrase_masks
from flmm.data.safe_pickle import load_plain_json
from flmm.errors import DataError

EVAL_IMAGES = "GranDf/GranDf_HA_images/val_test"
# name: (annotation JSON, image folder, format), relative to data.root
GCG_SPLITS = {
    f"{name}_{split}": (f"GranDf/annotations/train/{stem}_{split}.json", images, kind)
    for name, stem, images, kind in (
        ("psg", "OpenPsgGCG", "coco_2017/train2017", "groundings"),
        ("flickr", "flickr_mergedGT_GCG", "flikcr_30k/train", "coco"),  # GLaMM's folder name
        ("refcocog", "RefCOCOg_GCG", "coco_2014/train2014", "refs"),
    )
    for split in ("train", "val")
}
GCG_SPLITS["grandf_train"] = (
    "GranDf/annotations/train/GranDf_HA_GCG_train.json",
    "GranDf/GranDf_HA_images/train",
    "groundings",
)
# GLaMM's GCG evaluation ground truth; the mask GT file lies beside the caption GT named here.
GCG_SPLITS |= {
    f"grandf_{s}": (f"GranDf/annotations/val_test/{s}_gcg_coco_caption_gt.json", EVAL_IMAGES, "coco_gt")
    for s in ("val", "test")
}


@dataclass(frozen=True)
class GcgPhrase:
    """A grounded phrase: its text and `(start, end)` span in the caption."""

    text: str
    span: tuple[int, int]


@dataclass(frozen=True)
class GcgRecord:
    """One image of a GCG split; `masks()` gives its phrases' masks `(P, H, W)` bool."""

    image_id: str
    image_path: Path
    caption: str
    phrases: tuple[GcgPhrase, ...]
    load_masks: Callable[[], np.ndarray] = field(repr=False, compare=False)

    def masks(self) -> np.ndarray:
        return self.load_masks()


def is_gcg_split(spec: str) -> bool:
    """Whether `spec` names a GCG split (`gcg:NAME`) rather than a PNG one used as GCG."""
    return spec.partition(":")[0] == "gcg"


def gcg_split_paths(root: str | Path, spec: str) -> tuple[Path, Path, str]:
    """(annotation JSON, image folder, format) of `gcg:NAME`, or (narratives JSON, image folder, "png")."""
    name, _, split = spec.partition(":")
    if name == "png":
        if split not in PNG_SPLITS:
            raise DataError(f"'{spec}': png has splits {list(PNG_SPLITS)}")
        coco = Path(root) / "coco"
        return coco / "annotations" / f"png_coco_{split}.json", coco / split, "png"
    if name != "gcg" or split not in GCG_SPLITS:
        raise DataError(
            f"'{spec}' is not a GCG split: expected png:val2017 or gcg:NAME with NAME in {sorted(GCG_SPLITS)}"
        )
    ann, images, kind = GCG_SPLITS[split]
    return Path(root) / ann, Path(root) / images, kind


def load_gcg_split(root: str | Path, spec: str) -> list[GcgRecord]:
    """The records of a GCG split (`gcg:NAME` or `png:SPLIT`) under data root `root`."""
    ann, images, kind = gcg_split_paths(root, spec)
    for needed in (ann, mask_gt_path(ann)) if kind == "coco_gt" else (ann,):
        if not needed.is_file():
            raise DataError(
                f"data for '{spec}' not found: missing {needed} (GLaMM's GranD-f layout under data.root)"
            )
    if kind == "png":
        return _png_records(root, spec.partition(":")[2])
    return read_gcg_file(ann, images, kind)


def read_gcg_file(path: str | Path, image_dir: str | Path, kind: str) -> list[GcgRecord]:
    """Read one GranD-f GCG annotation file of format `kind` (`groundings`, `coco`, `refs` or `coco_gt`, whose
    `path` is the caption GT file)."""
    path, image_dir = Path(path), Path(image_dir)
    if kind == "coco_gt":
        return read_grandf_eval(path, mask_gt_path(path), image_dir)
    data = load_plain_json(path, f"GranD-f GCG annotations ({kind})")
    if kind == "coco":
        return _coco_records(data, path, image_dir)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of records, found {type(data).__name__}")
    reader = {"groundings": _groundings_record, "refs": _refs_record}[kind]
    return [reader(record, f"{path}: record #{i}", image_dir) for i, record in enumerate(data)]


def _groundings_record(record: object, where: str, image_dir: Path) -> GcgRecord:
    file_name, caption, groundings = typed_fields(
        record, where, {"file_name": str, "caption": str, "groundings": dict}
    )
    caption = caption.strip('"').strip()  # GLaMM strips the quotes some captions carry
    phrases, rles = [], []
    for text, grounding in groundings.items():
        at = f"{where}: grounding {text!r}"
        positives, masks = typed_fields(grounding, at, {"token_positives": list, "rle_masks": list})
        span = caption_span(positives, caption, f"{at}: field 'token_positives'")
        if not masks:
            raise DataError(f"{at}: field 'rle_masks' is empty")
        rles.append([checked_rle(m, f"{at}: field 'rle_masks'") for m in masks])
        phrases.append(GcgPhrase(caption[span[0] : span[1]], span))
    order = sorted(range(len(phrases)), key=lambda i: phrases[i].span)

    def load() -> np.ndarray:
        hw = tuple(rles[0][0]["size"]) if rles else image_hw(image_dir / file_name, where)
        return stack_masks(
            [decode_union(rles[i], hw, f"{where}: grounding {phrases[i].text!r}") for i in order], hw
        )

    stem = Path(file_name).stem
    return GcgRecord(stem, image_dir / file_name, caption, tuple(phrases[i] for i in order), load)


def _refs_record(record: object, where: str, image_dir: Path) -> GcgRecord:
    file_name, caption, refs = typed_fields(
        record, where, {"img_file_name": str, "caption": str, "refs": list}
    )
    caption = caption.strip('"').strip().lower()  # GLaMM matches the refs in the lower-cased caption
    found = []
    for k, ref in enumerate(refs):
        at = f"{where}: ref #{k}"
        sentence, polygons = typed_fields(ref, at, {"sentence": str, "segmentation": list})
        start = caption.find(sentence.lower()) if sentence.strip() else -1
        if start < 0:
            continue  # GLaMM leaves out the refs that are not in the caption
        bad = [p for p in polygons if not (isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0)]
        if bad or not polygons:
            found = reprlib.repr(polygons)
            raise DataError(f"{at}: field 'segmentation' should be polygons [x0, y0, x1, ...], found {found}")
        span = (start, start + len(sentence))
        found.append(
            (span, GcgPhrase(caption[span[0] : span[1]], span), polygons, f"{at}: field 'segmentation'")
        )
    found.sort(key=lambda item: item[0])
    path = image_dir / file_name

    def load() -> np.ndarray:
        # The polygons' coordinates are checked against the image size, known once the image is opened.
        hw = image_hw(path, where)
        masks = [decode_union([polygons_rle(polygons, hw, at)], hw, at) for _, _, polygons, at in found]
        return stack_masks(masks, hw)

    return GcgRecord(Path(file_name).stem, path, caption, tuple(p for _, p, _, _ in found), load)


def _coco_records(data: object, path: Path, image_dir: Path) -> list[GcgRecord]:
    images, annotations = typed_fields(data, str(path), {"images": list, "annotations": list})
    by_image = group_by_image(annotations, path, keep=lambda ann: not ann.get("ignore", False))
    records = []
    for i, image in enumerate(images):
        where = f"{path}: image #{i}"
        image_id, file_name, caption, height, width = typed_fields(
            image, where, {"id": object, "file_name": str, "caption": str, "height": int, "width": int}
        )
        hw = (height, width)
        phrases, rles = [], []
        for k, ann in by_image.get(image_id, []):
            at = f"{path}: annotation #{k} (image {image_id})"
            positives, sam_mask = typed_fields(ann, at, {"tokens_positive": list, "sam_mask": dict})
            if not positives:
                raise DataError(f"{at}: field 'tokens_positive' is empty")
            span = caption_span(positives[0], caption, f"{at}: field 'tokens_positive'")
            rles.append((at, checked_rle(sam_mask, f"{at}: field 'sam_mask'", hw)))
            phrases.append(GcgPhrase(caption[span[0] : span[1]], span))
        order = sorted(range(len(phrases)), key=lambda j: phrases[j].span)

        def load(rles=rles, order=order, hw=hw) -> np.ndarray:
            return stack_masks([decode_union([rles[j][1]], hw, rles[j][0]) for j in order], hw)

        records.append(
            GcgRecord(str(image_id), image_dir / file_name, caption, tuple(phrases[j] for j in order), load)
        )
    return records


def mask_gt_path(caption_gt: str | Path) -> Path:
    """The mask GT file beside a GCG evaluation caption GT file (`val_gcg_coco_mask_gt.json` for val)."""
    caption_gt = Path(caption_gt)
    if not caption_gt.name.endswith("_caption_gt.json"):
        raise DataError(f"{caption_gt}: expected a GLaMM caption GT file named *_caption_gt.json")
    return caption_gt.with_name(caption_gt.name.removesuffix("_caption_gt.json") + "_mask_gt.json")


def read_grandf_eval(caption_gt: str | Path, mask_gt: str | Path, image_dir: str | Path) -> list[GcgRecord]:
    """GLaMM's GCG evaluation ground truth: one record per image of the caption GT file (format `coco_gt`)."""
    caption_gt, mask_gt, image_dir = Path(caption_gt), Path(mask_gt), Path(image_dir)
    captions = load_plain_json(caption_gt, "GranD-f GCG caption ground truth")
    masks = load_plain_json(mask_gt, "GranD-f GCG mask ground truth")
    images, caption_anns = typed_fields(captions, str(caption_gt), {"images": list, "annotations": list})
    mask_images, mask_anns = typed_fields(masks, str(mask_gt), {"images": list, "annotations": list})
    sizes = {}
    for i, image in enumerate(mask_images):
        where = f"{mask_gt}: image #{i}"
        (image_id,) = typed_fields(image, where, {"id": object})
        sizes[checked_id(image_id, f"{where}: field 'id'")] = _entry_hw(image, where)
    by_caption, by_mask = group_by_image(caption_anns, caption_gt), group_by_image(mask_anns, mask_gt)
    records = []
    for i, image in enumerate(images):
        where = f"{caption_gt}: image #{i}"
        (image_id,) = typed_fields(image, where, {"id": object})
        image_id = checked_id(image_id, f"{where}: field 'id'")
        file_name = str(image.get("file_name") or f"{image_id}.jpg")  # GLaMM names images by their id
        if image_id not in by_caption:
            raise DataError(f"{where}: image {image_id!r} has no caption in the file's 'annotations'")
        k, ann = by_caption[image_id][0]
        at = f"{caption_gt}: annotation #{k} (image {image_id!r})"
        caption, labels = typed_fields(ann, at, {"caption": str, "labels": list})
        spans = _label_spans(labels, caption, at)
        hw, path = sizes.get(image_id) or _entry_hw(image, where), image_dir / file_name
        rles = []
        for m, mask_ann in by_mask.get(image_id, []):
            mat = f"{mask_gt}: annotation #{m} (image {image_id!r})"
            (segmentation,) = typed_fields(mask_ann, mat, {"segmentation": dict})
            rles.append((mat, checked_rle(segmentation, f"{mat}: field 'segmentation'", hw)))
        if len(rles) != len(labels):
            raise DataError(
                f"{at}: field 'labels' has {len(labels)} phrases but {mask_gt} has {len(rles)} masks for the "
                "image (GLaMM pairs them by position)"
            )
        phrases = [GcgPhrase(caption[s:e], (s, e)) for s, e in spans]
        order = sorted(range(len(phrases)), key=lambda j: phrases[j].span)

        def load(rles=rles, order=order, hw=hw, path=path, where=where) -> np.ndarray:
            size = hw or (tuple(rles[0][1]["size"]) if rles else image_hw(path, where))
            return stack_masks([decode_union([rles[j][1]], size, rles[j][0]) for j in order], size)

        records.append(GcgRecord(str(image_id), path, caption, tuple(phrases[j] for j in order), load))
    return records


def _entry_hw(image: dict, where: str) -> tuple[int, int] | None:
    if "height" not in image and "width" not in image:
        return None
    height, width = typed_fields(image, where, {"height": int, "width": int})
    return height, width


def _label_spans(labels: list, caption: str, where: str) -> list[tuple[int, int]]:
    """Each label's span: its k-th case-insensitive occurrence in the caption for its k-th repetition."""
    seen: dict[str, int] = {}
    spans = []
    for j, label in enumerate(labels):
        if not isinstance(label, str) or not label.strip():
            raise DataError(
                f"{where}: field 'labels' item #{j} should be a phrase, found {reprlib.repr(label)}"
            )
        text = label.strip().lower()
        found = [m.span() for m in re.finditer(re.escape(text), caption, re.IGNORECASE)]
        if not found:
            raise DataError(f"{where}: field 'labels' item #{j} {label!r} is not in the caption {caption!r}")
        spans.append(found[min(seen.get(text, 0), len(found) - 1)])
        seen[text] = seen.get(text, 0) + 1
    return spans


def _png_records(root: str | Path, split: str) -> list[GcgRecord]:
    records = []
    for narrative in load_png_split(root, split):
        phrases = tuple(GcgPhrase(p.utterance, p.span) for p in narrative.phrases)
        records.append(
            GcgRecord(
                str(narrative.image_id),
                narrative.image_path,
                narrative.caption,
                phrases,
                lambda narrative=narrative: phrase_masks(narrative),
            )
        )
    return records
