"""Torch datasets of grounding samples: RefCOCO/+/g and PNG, for training and for both RES protocols.

A sample is one LMM pass: an image, a text, and the phrases of that text to ground, each with its mask
at the original resolution and the metadata of its query:

    image        (H, W, 3) uint8 RGB
    text         str; phrase_spans[i] = (start, end) character span of phrase i in it
    masks        (P, H, W) bool
    queries      P dicts: dataset, split, protocol, query_id, image_id, image_file, expression, area,
                 bbox [x, y, w, h], first_sentence (RES) or plural/isthing (PNG)
    phrases_select_words
                 bool: True when the phrases are a selection of the text's words, so that which words lie
                 inside a phrase is a label of the text (PNG narratives); False when the text is made of
                 its phrases alone (RefCOCO expressions joined with ". ": every word is inside a phrase)
    skipped      list of `Skipped`: the broken records this sample stands in for (training), if any
    + whatever the image transform adds (lmm_image, pad_meta, ...)

A broken record in evaluation gives `{"skipped": [Skipped]}` and no sample. Either way the dataset does not
decide whether a run has lost too much data: it runs in data workers, which see only their share, so the
process that trains or evaluates counts the skips of all workers and ranks (`flmm.engine.skips`).

Protocols (DESIGN.md §4): `train` groups all referred objects of an image in one sample with a fresh
random sentence per object every epoch (call `set_epoch`); `all-sentences` makes every expression its own
sample; `first-sentence-concat` puts the first sentence of each object of an image in one sample. PNG has
one protocol, `narrative`: a caption and its grounded phrases.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from flmm.data.coco_masks import decode_segmentation
from flmm.data.image_io import load_rgb
from flmm.data.png import Narrative, load_png_split, phrase_masks
from flmm.data.refcoco import ReferredObject, load_refer_split
from flmm.data.skips import SkipBudget
from flmm.errors import DataError
from flmm.masks import box_xywh, mask_box
from flmm.registry import DATASETS

log = logging.getLogger("flmm.data")

RES_PROTOCOLS = ("train", "all-sentences", "first-sentence-concat")
PNG_PROTOCOLS = ("train", "narrative")
PHRASE_SEPARATOR = ". "


class Skipped(NamedTuple):
    """A record that could not be built: its dataset's `records_name`, index in it, and why. (A tuple:
    Lightning moves batches to the device field by field, and rebuilds tuples but not frozen dataclasses.)"""

    dataset: str
    index: int
    reason: str


def join_phrases(phrases: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """Join phrases with ". " into one text; return it and each phrase's character span."""
    spans, cursor = [], 0
    for phrase in phrases:
        spans.append((cursor, cursor + len(phrase)))
        cursor += len(phrase) + len(PHRASE_SEPARATOR)
    return PHRASE_SEPARATOR.join(phrases), spans


class GroundingDataset(Dataset):
    """Shared machinery: epochs, the image transform, and skipping of broken samples.

    Image files are checked for existence when the dataset is built, so a missing file is reported before
    any work starts (and reported in `load_skips`). A sample that still cannot be built (corrupt image,
    unreadable mask) is logged and reported in the sample (`skipped`), so an epoch never dies halfway. In
    training (`train` protocol) it is replaced by the next sample; in evaluation its place holds only the
    report, which `collate_grounding` drops from the batch, so that no query is counted twice.
    """

    name: str

    def __init__(self, transform: Callable[[np.ndarray], dict] | None, max_skip_fraction: float, seed: int):
        self.transform = transform
        self.max_skip_fraction = max_skip_fraction
        self.seed = seed
        self.epoch = 0
        # Records dropped when the dataset was built (index -1, -2, ...: they have no place in it).
        self.load_skips: list[Skipped] = []

    def _drop_missing_images(self, items: list, image_path: Callable[[object], Path]) -> list:
        """Keep the items whose image file exists; count the others as skips (over the cap: DataError)."""
        budget = SkipBudget(self.name, len(items), self.max_skip_fraction)
        kept = []
        for item in items:
            path = image_path(item)
            if path.is_file():
                kept.append(item)
            else:
                budget.skip(f"{path}: " + ("not a regular file" if path.exists() else "image file not found"))
        self.load_skips = [Skipped(self.records_name, -(k + 1), r) for k, r in enumerate(budget.reasons)]
        return kept

    @property
    def records_name(self) -> str:
        """The name its skipped records are counted under: split and protocol (`refcoco:val (train)`)."""
        return f"{self.name} ({self.protocol})"

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose random sentence draw `dataset[i]` uses."""
        self.epoch = int(epoch)

    def _build(self, index: int, epoch: int) -> dict:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict:
        return self.sample(index, self.epoch)

    def sample(self, index: int, epoch: int) -> dict:
        """The sample at `index` with the sentence draw of `epoch` (samplers that know the epoch call this).

        A broken record is logged and reported in `skipped`: in training the next record that builds takes
        its place; in evaluation the result is `{"skipped": [...]}` alone.
        """
        attempts = len(self) if self.protocol == "train" else 1
        skipped = []
        for attempt in range(attempts):
            candidate = (index + attempt) % len(self)
            try:
                sample = self._build(candidate, epoch)
                break
            except DataError as exc:
                log.warning("%s: skipped record %d: %s", self.name, candidate, exc)
                skipped.append(Skipped(self.records_name, candidate, str(exc)))
        else:
            if self.protocol != "train":
                return {"skipped": skipped}
            raise DataError(f"{self.name}: no sample could be built; first problems: {skipped[:3]}")
        if self.transform is not None:
            sample.update(self.transform(sample["image"]))
        sample["skipped"] = skipped
        return sample


@DATASETS.register_module()
class RefCocoDataset(GroundingDataset):
    """RefCOCO / RefCOCO+ / RefCOCOg samples of one split under one protocol."""

    def __init__(
        self,
        root: str | Path,
        dataset: str,
        split: str,
        protocol: str = "all-sentences",
        transform: Callable[[np.ndarray], dict] | None = None,
        max_skip_fraction: float = 0.0,
        seed: int = 0,
    ):
        super().__init__(transform, max_skip_fraction, seed)
        if protocol not in RES_PROTOCOLS:
            raise DataError(
                f"{dataset}:{split}: protocol must be one of {list(RES_PROTOCOLS)}, not '{protocol}'"
            )
        self.refer = load_refer_split(root, dataset, split, max_skip_fraction)
        self.dataset, self.split, self.protocol = dataset, split, protocol
        self.name = f"{dataset}:{split}"
        if protocol == "all-sentences":
            items = [([obj], [i]) for obj in self.refer.objects for i in range(len(obj.sentences))]
        else:
            items = [(objs, None) for objs in self.refer.objects_by_image().values()]
        self._items = self._drop_missing_images(
            items, lambda item: self.refer.images[item[0][0].image_id].path
        )

    def __len__(self) -> int:
        return len(self._items)

    def _sentence_choice(self, index: int, epoch: int, objects: list[ReferredObject]) -> list[int]:
        if self.protocol == "first-sentence-concat":
            return [0] * len(objects)
        rng = np.random.default_rng([self.seed, epoch, index])
        return [int(rng.integers(len(obj.sentences))) for obj in objects]

    def _build(self, index: int, epoch: int) -> dict:
        objects, choice = self._items[index]
        if choice is None:
            choice = self._sentence_choice(index, epoch, objects)
        info = self.refer.images[objects[0].image_id]
        image = load_rgb(info.path, (info.height, info.width))
        expressions = [obj.sentences[k] for obj, k in zip(objects, choice)]
        text, spans = join_phrases(expressions)
        masks, queries = [], []
        for obj, k in zip(objects, choice):
            where = f"{self.refer.refs_path.parent / 'instances.json'}: ann_id {obj.ann_id}"
            mask = decode_segmentation(obj.segmentation, info.height, info.width, where)
            masks.append(mask)
            queries.append(
                {
                    "dataset": self.dataset,
                    "split": self.split,
                    "protocol": self.protocol,
                    "query_id": f"{self.name}:ref{obj.ref_id}:sent{obj.sent_ids[k]}",
                    "ref_id": obj.ref_id,
                    "ann_id": obj.ann_id,
                    "sent_id": obj.sent_ids[k],
                    "image_id": obj.image_id,
                    "image_file": str(info.path),
                    "expression": obj.sentences[k],
                    "area": int(mask.sum()),
                    "bbox": list(obj.bbox),
                    "first_sentence": k == 0,
                }
            )
        return {
            "image": image,
            "image_id": info.image_id,
            "image_file": str(info.path),
            "text": text,
            "phrase_spans": spans,
            "masks": torch.from_numpy(np.stack(masks)),
            "queries": queries,
            "phrases_select_words": False,
        }


@DATASETS.register_module()
class PngDataset(GroundingDataset):
    """Panoptic Narrative Grounding: one sample per narrative with at least one grounded phrase."""

    def __init__(
        self,
        root: str | Path,
        split: str,
        protocol: str = "narrative",
        transform: Callable[[np.ndarray], dict] | None = None,
        max_skip_fraction: float = 0.0,
        seed: int = 0,
    ):
        super().__init__(transform, max_skip_fraction, seed)
        if protocol not in PNG_PROTOCOLS:
            raise DataError(f"png:{split}: protocol must be one of {list(PNG_PROTOCOLS)}, not '{protocol}'")
        self.dataset, self.split, self.protocol = "png", split, protocol
        self.name = f"png:{split}"
        narratives = load_png_split(root, split, max_skip_fraction)
        self.narratives: list[Narrative] = self._drop_missing_images(narratives, lambda n: n.image_path)

    def __len__(self) -> int:
        return len(self.narratives)

    def _build(self, index: int, epoch: int) -> dict:
        narrative = self.narratives[index]
        image = load_rgb(narrative.image_path, (narrative.height, narrative.width))
        masks = phrase_masks(narrative)
        queries = [
            {
                "dataset": "png",
                "split": self.split,
                "protocol": self.protocol,
                "query_id": f"{self.name}:n{narrative.index}:p{i}",
                "image_id": narrative.image_id,
                "image_file": str(narrative.image_path),
                "expression": phrase.utterance,
                "segment_ids": [str(s) for s in phrase.segment_ids],
                "area": int(mask.sum()),
                "bbox": box_xywh(mask_box(mask) or [0, 0, 0, 0]),
                "plural": phrase.plural,
                "isthing": phrase.isthing,
            }
            for i, (phrase, mask) in enumerate(zip(narrative.phrases, masks))
        ]
        return {
            "image": image,
            "image_id": narrative.image_id,
            "image_file": str(narrative.image_path),
            "text": narrative.caption,
            "phrase_spans": [p.span for p in narrative.phrases],
            "masks": torch.from_numpy(masks),
            "queries": queries,
            "phrases_select_words": True,
        }
