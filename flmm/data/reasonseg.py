"""ReasonSeg (LISA's reasoning-segmentation benchmark) in its released on-disk format.

    DATA_ROOT/reason_seg/ReasonSeg/{train,val,test}/NAME.json + NAME.jpg

Each JSON is a LabelMe file with two extra keys: `"text"`, a list of queries (questions or instructions),
and `"is_sentence"`, True for long (sentence) queries and False for short (phrase) ones. Its `"shapes"` are
polygons `{label, shape_type: "polygon", points: [[x, y], ...]}`: label "target" marks what the queries
refer to, "ignore" a region left out of the metrics, "flag" a deprecated annotation that is skipped. The
mask is drawn exactly as LISA's `get_mask_from_json` draws it: polygons sorted by area, largest first, each
filled (and outlined 1 px) with cv2 at integer coordinates, later ones painting over earlier ones.

Protocols: `all-sentences`, every query its own sample; `first-sentence-concat`, the first query of each
image only (LISA's validation protocol; one target per image, so nothing to concatenate); `train`, one
random query per image and epoch. Queries carry `is_sentence`, `query_length` ("short" / "long", the
groups `query_groups` names for the evaluation) and `ignore_mask`, `(H, W)` bool.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from flmm.data.datasets import RES_PROTOCOLS, GroundingDataset
from flmm.data.image_io import load_rgb
from flmm.data.skips import SkipBudget
from flmm.errors import DataError
from flmm.masks import box_xywh, mask_box
from flmm.registry import DATASETS

REASONSEG_SPLITS = ("train", "val", "test")


def reasonseg_dir(root: str | Path, split: str) -> Path:
    """The folder of a split's JSON and JPG files."""
    return Path(root) / "reason_seg" / "ReasonSeg" / split


@dataclass(frozen=True)
class ReasonSegImage:
    """One annotated image: its files, queries, query kind and polygons `(label, (K, 2) float points)`."""

    json_path: Path
    image_path: Path
    texts: tuple[str, ...]
    is_sentence: bool
    shapes: tuple[tuple[str, np.ndarray], ...]


def parse_reasonseg_json(path: Path) -> ReasonSegImage:
    """Read one annotation file; DataError naming the file and the field when it is malformed."""
    try:
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            # Some released ReasonSeg files are Windows-1252; LISA's loader falls back the same way.
            text = raw.decode("cp1252")
        record = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(record, dict):
        raise DataError(f"{path}: expected a JSON object, found {type(record).__name__}")
    texts = record.get("text")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise DataError(f"{path}: field 'text' must be a non-empty list of non-empty query strings")
    if not isinstance(record.get("is_sentence"), bool):
        raise DataError(f"{path}: field 'is_sentence' must be true or false")
    shapes = []
    for k, shape in enumerate(record.get("shapes") or []):
        try:
            label = str(shape["label"])
            points = np.asarray(shape["points"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{path}: shapes[{k}] needs a label and points [[x, y], ...] ({exc})") from None
        if label.lower() == "flag":
            continue
        if shape.get("shape_type", "polygon") != "polygon" or points.ndim != 2 or points.shape[1] != 2:
            raise DataError(f"{path}: shapes[{k}] must be a polygon with points [[x, y], ...]")
        shapes.append((label, points))
    if not any("ignore" not in label.lower() for label, _ in shapes):
        raise DataError(f"{path}: no target polygon in 'shapes'")
    image_path = path.with_suffix(".jpg")
    return ReasonSegImage(path, image_path, tuple(texts), record["is_sentence"], tuple(shapes))


def reasonseg_masks(
    shapes: tuple[tuple[str, np.ndarray], ...], height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Target and ignore masks `(H, W)` bool, drawn as LISA's `get_mask_from_json` draws its label map."""

    def drawn(points: np.ndarray, value: int, canvas: np.ndarray) -> np.ndarray:
        polygon = np.array([points], dtype=np.int32)
        cv2.polylines(canvas, polygon, True, value, 1)
        cv2.fillPoly(canvas, polygon, value)
        return canvas

    areas = [int(drawn(points, 1, np.zeros((height, width), np.uint8)).sum()) for _, points in shapes]
    labels = np.zeros((height, width), np.uint8)
    for index in np.argsort(areas)[::-1]:
        label, points = shapes[index]
        drawn(points, 255 if "ignore" in label.lower() else 1, labels)
    return labels == 1, labels == 255


@DATASETS.register_module(name="reasonseg")
class ReasonSegDataset(GroundingDataset):
    """ReasonSeg samples of one split: the query is the text and, whole, its one phrase."""

    query_groups = ("query_length", ("short", "long"))

    def __init__(
        self,
        root: str | Path,
        split: str,
        protocol: str = "all-sentences",
        transform: Callable[[np.ndarray], dict] | None = None,
        max_skip_fraction: float = 0.0,
        seed: int = 0,
    ):
        super().__init__(transform, max_skip_fraction, seed)
        if split not in REASONSEG_SPLITS:
            raise DataError(f"reasonseg has splits {list(REASONSEG_SPLITS)}, not '{split}'")
        if protocol not in RES_PROTOCOLS:
            raise DataError(
                f"reasonseg:{split}: protocol must be one of {list(RES_PROTOCOLS)}, not '{protocol}'"
            )
        self.dataset, self.split, self.protocol = "reasonseg", split, protocol
        self.name = f"reasonseg:{split}"
        folder = reasonseg_dir(root, split)
        paths = sorted(folder.glob("*.json"))
        if not paths:
            raise DataError(f"{self.name}: no annotation (*.json) under {folder}")
        budget = SkipBudget(f"{self.name} ({folder})", len(paths), max_skip_fraction)
        images = []
        for path in paths:
            try:
                images.append(parse_reasonseg_json(path))
            except DataError as exc:
                budget.skip(str(exc))
        images = self._drop_missing_images(images, lambda image: image.image_path)
        if protocol == "all-sentences":
            self._items = [(image, k) for image in images for k in range(len(image.texts))]
        else:
            self._items = [(image, 0 if protocol == "first-sentence-concat" else None) for image in images]

    def __len__(self) -> int:
        return len(self._items)

    def _build(self, index: int, epoch: int) -> dict:
        info, choice = self._items[index]
        if choice is None:
            choice = int(np.random.default_rng([self.seed, epoch, index]).integers(len(info.texts)))
        image = load_rgb(info.image_path)
        target, ignore = reasonseg_masks(info.shapes, *image.shape[:2])
        text = info.texts[choice]
        query = {
            "dataset": "reasonseg",
            "split": self.split,
            "protocol": self.protocol,
            "query_id": f"{self.name}:{info.json_path.stem}:q{choice}",
            "image_id": info.json_path.stem,
            "image_file": str(info.image_path),
            "expression": text,
            "area": int(target.sum()),
            "bbox": box_xywh(mask_box(target) or [0, 0, 0, 0]),
            "is_sentence": info.is_sentence,
            "query_length": "long" if info.is_sentence else "short",
            "ignore_mask": torch.from_numpy(ignore),
        }
        return {
            "image": image,
            "image_id": info.json_path.stem,
            "image_file": str(info.image_path),
            "text": text,
            "phrase_spans": [(0, len(text))],
            "masks": torch.from_numpy(target[None]),
            "queries": [query],
            # The whole query is the one phrase, so every word would count as inside it; the words that
            # name the target of a question or instruction are not marked.
            "phrases_select_words": False,
        }
