"""Read Panoptic Narrative Grounding (PNG) from its real on-disk format (DESIGN.md §3).

A narrative is a caption split into utterances; an utterance with panoptic `segment_ids` is a grounded
phrase whose mask is the union of those segments in the COCO panoptic PNG (id = R + 256 G + 256^2 B).
A singular phrase is a thing or stuff after its segment's category; plural phrases count as things
(the reference convention). Narratives without a grounded phrase are skipped, as in the reference.
"""

from __future__ import annotations

import reprlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flmm.data.image_io import read_image
from flmm.data.safe_pickle import load_plain_json
from flmm.data.skips import SkipBudget
from flmm.errors import DataError

PNG_SPLITS = ("train2017", "val2017")


@dataclass(frozen=True)
class GroundedPhrase:
    """A grounded utterance: its text, character span in the caption and panoptic segments."""

    utterance: str
    span: tuple[int, int]
    segment_ids: tuple[int, ...]
    plural: bool
    isthing: bool


@dataclass(frozen=True)
class Narrative:
    """One narrative: caption, grounded phrases, and the files that hold its image and segments."""

    index: int
    image_id: int
    image_path: Path
    panoptic_path: Path
    height: int
    width: int
    caption: str
    phrases: tuple[GroundedPhrase, ...]


def png_paths(root: str | Path, split: str) -> tuple[Path, Path, Path, Path]:
    """Return (narratives json, panoptic json, panoptic PNG dir, image dir) of a PNG split."""
    if split not in PNG_SPLITS:
        raise DataError(f"png has splits {list(PNG_SPLITS)}, not '{split}'")
    coco = Path(root) / "coco"
    ann = coco / "annotations"
    return (
        ann / f"png_coco_{split}.json",
        ann / f"panoptic_{split}.json",
        ann / f"panoptic_{split}",
        coco / split,
    )


def _narrative_fields(record: object, where: str) -> tuple[int, str, list[dict]]:
    """(image_id, caption, segments) of a narrative record, each of the right type."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: should be an object, found {type(record).__name__} {reprlib.repr(record)}")
    missing = [key for key in ("image_id", "caption", "segments") if key not in record]
    if missing:
        raise DataError(f"{where}: field {missing[0]!r} is missing")
    image_id, caption, segments = record["image_id"], record["caption"], record["segments"]
    if isinstance(image_id, bool) or not str(image_id).strip().isdigit():
        raise DataError(f"{where}: field 'image_id' should be a number, found {reprlib.repr(image_id)}")
    if not isinstance(caption, str):
        raise DataError(f"{where}: field 'caption' should be a string, found {type(caption).__name__}")
    if not isinstance(segments, list) or not all(isinstance(s, dict) for s in segments):
        raise DataError(
            f"{where}: field 'segments' should be a list of objects, found {reprlib.repr(segments)}"
        )
    return int(image_id), caption, segments


def _segment_ids(seg: dict, where: str) -> tuple[int, ...]:
    """The panoptic ids of a grounded utterance: a list of numbers (strings in the PNG release)."""
    ids = seg["segment_ids"]
    if not isinstance(ids, list) or not all(
        not isinstance(i, bool) and str(i).strip().isdigit() for i in ids
    ):
        raise DataError(
            f"{where}: field 'segment_ids' should be a list of numbers, found {reprlib.repr(ids)}"
        )
    return tuple(int(i) for i in ids)


def _locate(caption: str, utterance: str, cursor: int) -> tuple[int, int] | None:
    start = caption.find(utterance, cursor)
    return None if start < 0 else (start, start + len(utterance))


def load_png_split(root: str | Path, split: str, max_skip_fraction: float = 0.0) -> list[Narrative]:
    """Load the narratives of a PNG split that have at least one grounded phrase.

    Segment ids absent from the image's panoptic `segments_info` make the narrative a counted skip;
    pixels are checked later, when the mask is built.
    """
    narratives_path, panoptic_path, panoptic_dir, image_dir = png_paths(root, split)
    narratives = load_plain_json(narratives_path, "PNG narratives list")
    panoptic = load_plain_json(panoptic_path, "COCO panoptic annotations")
    try:
        categories = {int(c["id"]): bool(c["isthing"]) for c in panoptic["categories"]}
        images = {
            int(im["id"]): (im["file_name"], int(im["height"]), int(im["width"])) for im in panoptic["images"]
        }
        segments = {
            int(a["image_id"]): (
                a["file_name"],
                {int(s["id"]): int(s["category_id"]) for s in a["segments_info"]},
            )
            for a in panoptic["annotations"]
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{panoptic_path}: not a COCO panoptic file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(narratives, list):
        raise DataError(
            f"{narratives_path}: expected a list of narratives, found {type(narratives).__name__}"
        )

    budget = SkipBudget(f"png:{split} ({narratives_path})", len(narratives), max_skip_fraction)
    out = []
    for index, record in enumerate(narratives):
        where = f"{narratives_path}: narrative #{index}"
        try:
            image_id, caption, raw_segments = _narrative_fields(record, where)
        except DataError as exc:
            budget.skip(str(exc))
            continue
        where = f"{where} (image_id {image_id})"
        grounded = [s for s in raw_segments if s.get("segment_ids")]
        if not grounded:
            continue
        if image_id not in images or image_id not in segments:
            budget.skip(f"{where}: image {image_id} is not in {panoptic_path}")
            continue
        png_name, seg_categories = segments[image_id]
        phrases = _parse_phrases(raw_segments, caption, seg_categories, categories, where, budget)
        if phrases is None:
            continue
        image_name, height, width = images[image_id]
        out.append(
            Narrative(
                index=index,
                image_id=image_id,
                image_path=image_dir / image_name,
                panoptic_path=panoptic_dir / png_name,
                height=height,
                width=width,
                caption=caption,
                phrases=tuple(phrases),
            )
        )
    return out


def _parse_phrases(
    raw_segments: list[dict],
    caption: str,
    seg_categories: dict[int, int],
    categories: dict[int, bool],
    where: str,
    budget: SkipBudget,
) -> list[GroundedPhrase] | None:
    phrases = []
    cursor = 0
    for seg in raw_segments:
        utterance = str(seg.get("utterance", ""))
        span = _locate(caption, utterance, cursor)
        if span is not None:
            cursor = span[1]
        if not seg.get("segment_ids"):
            continue
        problem = None
        if not utterance.strip():
            problem = f"grounded utterance {utterance!r} is empty or whitespace only"
        elif span is None:
            problem = f"utterance '{utterance}' is not in its caption"
        if problem is not None:
            budget.skip(f"{where}: {problem}")
            return None
        try:
            ids = _segment_ids(seg, f"{where}: phrase '{utterance}'")
        except DataError as exc:
            budget.skip(str(exc))
            return None
        missing = [s for s in ids if s not in seg_categories]
        if missing:
            budget.skip(
                f"{where}: phrase '{utterance}' names segment ids {missing} absent from segments_info"
            )
            return None
        plural = bool(seg.get("plural", False))
        isthing = plural or categories.get(seg_categories[ids[0]], False)
        phrases.append(GroundedPhrase(utterance, span, ids, plural, isthing))
    return phrases


def read_panoptic_ids(path: Path, expected_hw: tuple[int, int]) -> np.ndarray:
    """Decode a panoptic PNG to a `(H, W)` int64 map of segment ids (R + 256 G + 256^2 B).

    The file is checked like an image (`read_image`: missing, empty, corrupt, another size than the image);
    the ids live in 8-bit channels, so a wider mode cannot be a panoptic map.
    """
    img = read_image(path, expected_hw)
    if img.mode not in ("RGB", "RGBA", "P"):
        raise DataError(f"{path}: a panoptic PNG is 8-bit RGB, this one has mode {img.mode}")
    rgb = np.asarray(img.convert("RGB"), dtype=np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def phrase_masks(narrative: Narrative) -> np.ndarray:
    """Masks of a narrative's phrases, `(P, H, W)` bool, each the union of the phrase's segments.

    A segment id with no pixel in the panoptic map is a DataError naming the PNG and the phrase.
    """
    ids = read_panoptic_ids(narrative.panoptic_path, (narrative.height, narrative.width))
    present = set(np.unique(ids).tolist())
    masks = np.zeros((len(narrative.phrases), narrative.height, narrative.width), dtype=bool)
    for i, phrase in enumerate(narrative.phrases):
        absent = [s for s in phrase.segment_ids if s not in present]
        if absent:
            raise DataError(
                f"{narrative.panoptic_path}: segment ids {absent} of phrase '{phrase.utterance}' "
                f"(narrative #{narrative.index}) have no pixel in the panoptic map"
            )
        masks[i] = np.isin(ids, phrase.segment_ids)
    return masks
