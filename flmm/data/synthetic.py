"""Deterministic synthetic grounding world (SCOUT-style controllable composition) in the real dataset formats.

Scenes of coloured shapes (shape x colour x size x position x count, optional occlusion) on varied
backgrounds are written as RefCOCO / RefCOCO+ / RefCOCOg (instances.json + refs pickles) and as Panoptic
Narrative Grounding (panoptic json + PNGs + narratives) in the layout of DESIGN.md §3, so the real loaders
read them unchanged. The same seed gives byte-identical files. With `holdout_combos`, a seed-chosen set of
(colour, shape) pairs never appears in training images but does in val/test images and expressions: a probe
of compositional generalisation. Stored masks are the visible parts; every object stays >= 60 % visible.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from flmm.data.synthetic_reason import write_reasonseg
from flmm.data.synthetic_scene import (
    BACKGROUNDS,
    COLOURS,
    SHAPES,
    STUFF,
    Scene,
    SceneObject,
    compose_scene,
)
from flmm.data.synthetic_text import narrative, ref_record, refer_objects
from flmm.errors import ConfigError
from flmm.masks import box_xywh, mask_box, mask_rle

RES_EVAL_SPLITS = (("val", 0.1), ("testA", 0.1), ("testB", 0.1))
PNG_VAL_FRACTION = 0.2
PNG_ID_BASE = 1_000_000  # PNG image ids start here, RES ids at 1: the two sets never collide
REFS_FILES = {"refcoco": "refs(unc).p", "refcoco+": "refs(unc).p", "refcocog": "refs(umd).p"}
PANOPTIC_CATEGORIES = [
    {"id": k + 1, "name": s, "supercategory": "shape", "isthing": 1, "color": list(rgb)}
    for k, (s, rgb) in enumerate(zip(SHAPES, COLOURS.values()))
] + [
    {"id": i, "name": n, "supercategory": sc, "isthing": 0, "color": list(rgb)}
    for i, n, sc, rgb in sorted(STUFF.values())
]
_LICENSE = {"id": 1, "name": "CC0", "url": ""}
_COCO_IMAGE_EXTRAS = {"license": 1, "coco_url": "", "flickr_url": "", "date_captured": ""}


@dataclass(frozen=True)
class SyntheticConfig:
    """How big a world to build; `size` is the base side in pixels (images vary 0.75-1.33x on one side)."""

    seed: int = 0
    n_res_images: int = 300
    n_png_images: int = 100
    # Images of the synthetic ReasonSeg split (`flmm.data.synthetic_reason`), one question each.
    n_reason_images: int = 0
    size: int = 128
    max_objects: int = 5
    overlap: float = 0.3
    holdout_combos: bool = True

    def __post_init__(self) -> None:
        for ok, what in [
            (min(self.n_res_images, self.n_png_images, self.n_reason_images) >= 0, "counts must be >= 0"),
            (self.size >= 32, "size must be >= 32 pixels"),
            (1 <= self.max_objects <= 9, "max_objects must be in 1..9"),
            (0.0 <= self.overlap <= 1.0, "overlap must be a probability in [0, 1]"),
        ]:
            if not ok:
                raise ConfigError(f"SyntheticConfig: {what}; got {self}")


def holdout_pairs(config: SyntheticConfig) -> list[tuple[str, str]]:
    """The (colour, shape) pairs kept out of training images: ~15 %, no colour or shape used twice."""
    if not config.holdout_combos:
        return []
    rng = np.random.default_rng([config.seed, 2])
    colours = [str(c) for c in rng.permutation(list(COLOURS))]
    shapes = [str(s) for s in rng.permutation(SHAPES)]
    k = round(0.15 * len(COLOURS) * len(SHAPES))
    return sorted((colours[i % len(colours)], shapes[i % len(shapes)]) for i in range(k))


def train_pairs(config: SyntheticConfig) -> list[tuple[str, str]]:
    """The (colour, shape) pairs that training images may show: all but the held-out ones."""
    holdout = holdout_pairs(config)
    return [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in holdout]


def sample_scene(rng: np.random.Generator, config: SyntheticConfig, allowed: list) -> Scene:
    """A scene drawn like a RefCOCO train image of `config` (image size, object count, overlap, background)
    from the pairs `allowed`: scenes beyond the world's own, e.g. to pretrain the toy models on."""
    w, h = _image_size(rng, config.size)
    lo = 1 if rng.random() < 0.1 else 2
    n_objects = int(rng.integers(min(lo, config.max_objects), config.max_objects + 1))
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    return compose_scene(rng, w, h, n_objects, config.overlap, background, allowed, [])


def _image_size(rng, base: int) -> tuple[int, int]:
    other = round(base * rng.uniform(0.75, 1.33)) if rng.random() < 0.6 else base
    return (base, other) if rng.random() < 0.5 else (other, base)


def _split_of(n: int, rng, fractions) -> list[str]:
    splits = ["train"] * n
    order, start = rng.permutation(n), 0
    for name, frac in fractions if n >= 2 * len(fractions) else ():
        for i in order[start : start + max(1, round(frac * n))]:
            splits[int(i)] = name
        start += max(1, round(frac * n))
    return splits


def _assign_holdout(holdout: list, splits: list[str], caps: dict[str, int], what: str) -> dict[int, list]:
    """Spread the held-out pairs round-robin over the evaluation images (at most `caps[split]` each)."""
    evals = [i for i, s in enumerate(splits) if s != "train"]
    forced: dict[int, list] = {i: [] for i in range(len(splits))}
    slots = [i for rnd in range(max(caps.values())) for i in evals if caps[splits[i]] > rnd]
    if len(holdout) > len(slots):
        raise ConfigError(
            f"SyntheticConfig: holdout_combos needs room for {len(holdout)} held-out pairs in the {what} "
            f"val/test images, found {len(evals)} images; add images or use --no-holdout-combos"
        )
    for pair, i in zip(holdout, slots):
        forced[i].append(pair)
    return forced


def _header(config: SyntheticConfig) -> dict:
    return {"info": {"description": "flmm synthetic world", "config": asdict(config)}, "licenses": [_LICENSE]}


def _dump_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, sort_keys=True, separators=(",", ":")))


def _save_image(path: Path, img: np.ndarray, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # 4:4:4 chroma: with 4:2:0 the colour of a 3-pixel-wide arm of a small cross bleeds into the background
    Image.fromarray(img).save(
        path, format=fmt, **({"quality": 95, "subsampling": 0} if fmt == "JPEG" else {})
    )


def _rle_counts(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE counts (column-major runs, starting with a run of zeros)."""
    flat = mask.T.reshape(-1).astype(np.int8)
    edges = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    runs = np.diff(edges).tolist()
    return [0, *runs] if flat[0] else runs


def _annotation(o: SceneObject, ann_id: int, image_id: int, rng) -> dict:
    """COCO annotation: polygon when the whole shape is visible, RLE (iscrowd 1, like real COCO) otherwise."""
    h, w = o.mask.shape
    if not o.occluded:
        seg, rle = [o.polygon], mask_utils.merge(mask_utils.frPyObjects([o.polygon], h, w))
    else:
        rle = mask_rle(o.mask)
        compressed = rng.random() < 0.5  # both encodings occur in real files
        seg = rle if compressed else {"size": [h, w], "counts": _rle_counts(o.mask)}
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": SHAPES.index(o.shape) + 1,
        "segmentation": seg,
        "area": float(mask_utils.area(rle)),
        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
        "iscrowd": int(o.occluded),
    }


def _write_res(out: Path, config: SyntheticConfig, holdout: list) -> dict[str, int]:
    n, combos = config.n_res_images, [(c, s) for c in COLOURS for s in SHAPES]
    splits = _split_of(n, np.random.default_rng([config.seed, 3]), RES_EVAL_SPLITS)
    caps = {"val": config.max_objects, "testA": min(3, config.max_objects), "testB": config.max_objects}
    forced = _assign_holdout(holdout, splits, caps, "RefCOCO") if n else {}
    images, anns = [], []
    refs: dict[str, list] = {style: [] for style in REFS_FILES}
    sent_ids = dict.fromkeys(refs, 0)
    for idx, split in enumerate(splits):
        rng, image_id = np.random.default_rng([config.seed, 0, idx]), idx + 1
        w, h = _image_size(rng, config.size)
        lo, hi = {"testA": (2, 3), "testB": (4, 9)}.get(split, (1 if rng.random() < 0.1 else 2, 9))
        hi = min(hi, config.max_objects)
        allowed = [c for c in combos if c not in holdout] if split == "train" else combos
        overlap = max(config.overlap, 0.5) if split == "testB" else config.overlap
        bg = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
        scene = compose_scene(
            rng, w, h, int(rng.integers(min(lo, hi), hi + 1)), overlap, bg, allowed, forced[idx]
        )
        name = f"COCO_train2014_{image_id:012d}.jpg"
        _save_image(out / "coco" / "train2014" / name, scene.image, "JPEG")
        images.append({"file_name": name, "height": h, "width": w, "id": image_id, **_COCO_IMAGE_EXTRAS})
        spoken = refer_objects(scene.objects, w, h, holdout, rng)
        first = len(anns)
        anns += [_annotation(o, first + i + 1, image_id, rng) for i, o in enumerate(scene.objects)]
        for style, items in spoken.items():
            ref_split = {"testA": "test", "testB": "test"}.get(split, split) if style == "refcocog" else split
            for i, texts in items:
                refs[style].append(
                    ref_record(len(refs[style]), anns[first + i], ref_split, texts, sent_ids[style])
                )
                sent_ids[style] += len(texts)
    instances = {
        **_header(config),
        "images": images,
        "annotations": anns,
        "categories": [{"id": k + 1, "name": s, "supercategory": "shape"} for k, s in enumerate(SHAPES)],
    }
    for style, refs_file in REFS_FILES.items():
        _dump_json(out / "coco" / style / "instances.json", instances)
        (out / "coco" / style / refs_file).write_bytes(pickle.dumps(refs[style], protocol=2))
    counts = {"res_images": n, "res_annotations": len(anns)}
    counts.update({f"{style}_refs": len(style_refs) for style, style_refs in refs.items()})
    return counts | {f"{style}_sentences": k for style, k in sent_ids.items()}


def _write_png(out: Path, config: SyntheticConfig, holdout: list) -> dict[str, int]:
    n, combos = config.n_png_images, [(c, s) for c in COLOURS for s in SHAPES]
    splits = _split_of(n, np.random.default_rng([config.seed, 4]), (("val", PNG_VAL_FRACTION),))
    forced = _assign_holdout(holdout, splits, {"val": config.max_objects}, "PNG") if n else {}
    per_split = {s: {"images": [], "annotations": [], "narratives": []} for s in ("train", "val")}
    for idx, split in enumerate(splits):
        rng, image_id = np.random.default_rng([config.seed, 1, idx]), PNG_ID_BASE + idx + 1
        w, h = _image_size(rng, config.size)
        allowed = [c for c in combos if c not in holdout] if split == "train" else combos
        n_obj = int(rng.integers(1, config.max_objects + 1))
        scene = compose_scene(rng, w, h, n_obj, config.overlap, "regions", allowed, forced[idx])
        stem, folder = f"{image_id:012d}", f"{split}2017"
        _save_image(out / "coco" / folder / f"{stem}.jpg", scene.image, "JPEG")
        ids = (rng.choice(2**24 - 1, 2 + len(scene.objects), replace=False) + 1).tolist()  # like COCO
        id_map, infos = np.zeros((h, w), np.int64), []
        things = scene.things_mask()
        regions = [(scene.stuff[p][1] & ~things, STUFF[scene.stuff[p][0]][0]) for p in ("top", "bottom")]
        regions += [(o.mask, SHAPES.index(o.shape) + 1) for o in scene.objects]
        for sid, (mask, cat) in zip(ids, regions):
            if mask.any():
                id_map[mask] = sid
                bbox = [int(v) for v in box_xywh(mask_box(mask))]  # panoptic segments_info boxes are ints
                infos.append(
                    {"id": sid, "category_id": cat, "iscrowd": 0, "bbox": bbox, "area": int(mask.sum())}
                )
        rgb = np.stack([id_map % 256, id_map // 256 % 256, id_map // 65536], -1).astype(np.uint8)
        _save_image(out / "coco" / "annotations" / f"panoptic_{folder}" / f"{stem}.png", rgb, "PNG")
        bucket = per_split[split]
        bucket["images"].append({"file_name": f"{stem}.jpg", "height": h, "width": w, "id": image_id})
        bucket["annotations"].append(
            {"segments_info": infos, "file_name": f"{stem}.png", "image_id": image_id}
        )
        present = {info["id"] for info in infos}
        stuff = {p: (scene.stuff[p][0], sid) for p, sid in zip(("top", "bottom"), ids) if sid in present}
        things_ids = [(o, sid) for o, sid in zip(scene.objects, ids[2:])]
        bucket["narratives"].append(narrative(image_id, things_ids, stuff, w, h, rng))
    for split, bucket in per_split.items():
        ann_dir = out / "coco" / "annotations"
        (ann_dir / f"panoptic_{split}2017").mkdir(parents=True, exist_ok=True)
        _dump_json(ann_dir / f"png_coco_{split}2017.json", bucket.pop("narratives"))
        _dump_json(
            ann_dir / f"panoptic_{split}2017.json",
            {**_header(config), **bucket, "categories": PANOPTIC_CATEGORIES},
        )
    return {f"png_{s}_images": len(b["images"]) for s, b in per_split.items()}


def write_world_reasonseg(out: Path, config: SyntheticConfig) -> dict[str, int]:
    """The world's ReasonSeg split (`config.n_reason_images`; none when 0), from its own seed stream."""
    if not config.n_reason_images:
        return {}
    counts = write_reasonseg(out, config.seed, config.n_reason_images, config.size, config.max_objects)
    return {f"reasonseg_{key}": n for key, n in counts.items()}


def generate_world(out_dir: str | Path, config: SyntheticConfig) -> dict[str, int]:
    """Write the whole world under `out_dir` (DESIGN.md §3 layout) and return counts of what was written.

    Existing files of the same names are overwritten; nothing else under `out_dir` is touched.
    """
    out, holdout = Path(out_dir), holdout_pairs(config)
    counts = _write_res(out, config, holdout)
    counts.update(_write_png(out, config, holdout))
    counts.update(write_world_reasonseg(out, config))
    counts["holdout_pairs"] = len(holdout)
    return counts
