"""The synthetic world: deterministic, in the real formats, and its expressions name one object each."""

from __future__ import annotations

import json
import pickle
import re
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from flmm.data.synthetic import COLOURS, SHAPES, SyntheticConfig, generate_world, holdout_pairs
from flmm.data.synthetic_text import Query, resolve
from flmm.errors import ConfigError
from tests.conftest import load_tool

CONFIG = SyntheticConfig(seed=3, n_res_images=40, n_png_images=12, size=64)
REFS = {"refcoco": "refs(unc).p", "refcoco+": "refs(unc).p", "refcocog": "refs(umd).p"}
REF_KEYS = {"sent_ids", "file_name", "ann_id", "ref_id", "image_id", "split", "sentences", "category_id"}
RELATION = re.compile(r"\b(above|below|under|underneath|left of|right of|next to|near|close to)\b")
LOCATION = re.compile(r"\b(left|right|top|bottom|leftmost|rightmost|topmost|lowest|middle|center|corner)\b")
SIZES = {"small": "small", "little": "small", "large": "large", "big": "large"}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    generate_world(root, CONFIG)
    return root


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _instances(root: Path) -> dict:
    return json.loads((root / "coco" / "refcoco" / "instances.json").read_text())


def _refs(root: Path, dataset: str) -> list[dict]:
    return pickle.loads((root / "coco" / dataset / REFS[dataset]).read_bytes())


def _decode(ann: dict, h: int, w: int) -> np.ndarray:
    seg = ann["segmentation"]
    if isinstance(seg, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    elif isinstance(seg["counts"], list):
        rle = mask_utils.frPyObjects(seg, h, w)
    else:
        rle = seg
    return mask_utils.decode(rle).astype(bool)


def _seen_objects(root: Path) -> dict[int, dict]:
    """ann id -> what the files show: shape (category), colour (nearest palette colour of the JPEG pixels
    under the mask), area, image id, image split — independent of the generator's own bookkeeping."""
    inst = _instances(root)
    images = {im["id"]: im for im in inst["images"]}
    split_of = {r["image_id"]: r["split"] for r in _refs(root, "refcoco")}
    names, palette = list(COLOURS), np.array(list(COLOURS.values()), float)
    seen = {}
    for ann in inst["annotations"]:
        im = images[ann["image_id"]]
        pixels = np.asarray(Image.open(root / "coco" / "train2014" / im["file_name"]).convert("RGB"), float)
        rgb = np.median(pixels[_decode(ann, im["height"], im["width"])], axis=0)
        seen[ann["id"]] = {
            "shape": SHAPES[ann["category_id"] - 1],
            "colour": names[int(np.argmin(((palette - rgb) ** 2).sum(1)))],
            "area": ann["area"],
            "image_id": ann["image_id"],
            "split": split_of.get(ann["image_id"]),
        }
    return seen


def test_same_seed_gives_identical_bytes_and_another_seed_differs(world, tmp_path):
    args = ["--seed", "3", "--images", "40", "--png-images", "12", "--size", "64"]
    load_tool("make_synthetic").main(["--out", str(tmp_path / "again"), *args])
    generate_world(tmp_path / "other", SyntheticConfig(**{**CONFIG.__dict__, "seed": 4}))
    first, again, other = _files(world), _files(tmp_path / "again"), _files(tmp_path / "other")
    assert first == again
    assert first["coco/refcoco/instances.json"] != other["coco/refcoco/instances.json"]


def test_annotations_decode_to_their_area_and_bbox_with_mixed_encodings(world):
    inst = _instances(world)
    images = {im["id"]: im for im in inst["images"]}
    kinds = set()
    for ann in inst["annotations"]:
        im = images[ann["image_id"]]
        mask = _decode(ann, im["height"], im["width"])
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert mask.shape == (im["height"], im["width"])
        assert ann["area"] == mask.sum() > 0
        assert ann["bbox"] == mask_utils.toBbox(rle).tolist()
        seg = ann["segmentation"]
        kinds.add("polygon" if isinstance(seg, list) else type(seg["counts"]).__name__)
        assert ann["iscrowd"] == (not isinstance(seg, list))
    assert kinds == {"polygon", "str", "list"}
    assert {(im["width"], im["height"]) for im in inst["images"]} != {(64, 64)}
    for dataset in REFS:
        assert (world / "coco" / dataset / "instances.json").read_bytes() == json.dumps(
            inst, sort_keys=True, separators=(",", ":")
        ).encode()


def test_refs_have_the_real_keys_splits_and_tokens(world):
    anns = {a["id"]: a for a in _instances(world)["annotations"]}
    per_image = defaultdict(int)
    for a in anns.values():
        per_image[a["image_id"]] += 1
    unc_split = {}
    for dataset in REFS:
        refs = _refs(world, dataset)
        expected = {"train", "val", "test"} if dataset == "refcocog" else {"train", "val", "testA", "testB"}
        assert {r["split"] for r in refs} == expected
        sent_ids = [s["sent_id"] for r in refs for s in r["sentences"]]
        assert len(sent_ids) == len(set(sent_ids))
        for r in refs:
            assert set(r) == REF_KEYS and 1 <= len(r["sentences"]) <= 3
            assert r["file_name"] == f"COCO_train2014_{r['image_id']:012d}_{r['ann_id']}.jpg"
            assert r["category_id"] == anns[r["ann_id"]]["category_id"]
            assert r["image_id"] == anns[r["ann_id"]]["image_id"]
            assert r["sent_ids"] == [s["sent_id"] for s in r["sentences"]]
            for s in r["sentences"]:
                assert set(s) == {"raw", "sent", "tokens", "sent_id"}
                assert s["sent"] == " ".join(s["tokens"]) == s["sent"].lower()
            if dataset == "refcocog":  # the same images are held out in all three datasets
                unc = unc_split[r["image_id"]]
                assert {"testA": "test", "testB": "test"}.get(unc, unc) == r["split"]
            else:
                assert unc_split.setdefault(r["image_id"], r["split"]) == r["split"]
                assert per_image[r["image_id"]] in {"testA": (2, 3), "testB": (4, 5)}.get(
                    r["split"], range(1, 6)
                )


def test_no_two_objects_of_an_image_share_a_sentence(world):
    for dataset in REFS:
        owners = defaultdict(set)
        for r in _refs(world, dataset):
            for s in r["sentences"]:
                owners[(r["image_id"], s["sent"])].add(r["ann_id"])
        assert all(len(a) == 1 for a in owners.values()), dataset


def test_attribute_expressions_fit_exactly_one_object_seen_in_the_pixels(world):
    seen = _seen_objects(world)
    checked = 0
    for dataset in ("refcoco", "refcoco+"):
        for r in _refs(world, dataset):
            for s in r["sentences"]:
                words = s["tokens"]
                shape = next((w for w in words if w in SHAPES), None)
                if RELATION.search(s["sent"]) or LOCATION.search(s["sent"]) or shape is None:
                    continue
                colour = next((w for w in words if w in COLOURS), None)
                size = next((SIZES[w] for w in words if w in SIZES), None)
                ref = seen[r["ann_id"]]
                assert ref["shape"] == shape and colour in (None, ref["colour"]), s["sent"]
                rivals = [
                    o
                    for k, o in seen.items()
                    if k != r["ann_id"]
                    and o["image_id"] == r["image_id"]
                    and o["shape"] == shape
                    and colour in (None, o["colour"])
                ]
                if size is None:
                    assert rivals == [], s["sent"]
                for o in rivals:  # same shape, so the size bands separate the areas by > 2x
                    assert (o["area"] > 1.5 * ref["area"]) == (size == "small"), s["sent"]
                    assert (ref["area"] > 1.5 * o["area"]) == (size == "large"), s["sent"]
                checked += 1
    assert checked > 50


def test_refcoco_mixes_three_kinds_refcoco_plus_has_no_location_words_refcocog_is_longer(world):
    def kind(sent: str) -> str:
        return "relation" if RELATION.search(sent) else "location" if LOCATION.search(sent) else "attribute"

    sents = {d: [s["sent"] for r in _refs(world, d) for s in r["sentences"]] for d in REFS}
    assert {kind(s) for s in sents["refcoco"]} == {"attribute", "location", "relation"}
    assert {kind(s) for s in sents["refcoco+"]} == {"attribute", "relation"}
    assert not any(LOCATION.search(s) for s in sents["refcoco+"])
    lengths = {d: np.mean([len(s.split()) for s in v]) for d, v in sents.items()}
    assert lengths["refcocog"] > lengths["refcoco"] + 3


def test_held_out_pairs_never_in_train_and_named_in_val_and_test(world):
    held = holdout_pairs(CONFIG)
    assert len(held) == 6 and holdout_pairs(SyntheticConfig(holdout_combos=False)) == []
    seen = _seen_objects(world).values()
    assert not [o for o in seen if o["split"] == "train" and (o["colour"], o["shape"]) in held]
    assert {(o["colour"], o["shape"]) for o in seen if o["split"] not in ("train", None)} >= set(held)
    for dataset in REFS:
        refs = _refs(world, dataset)
        for split_is_train in (True, False):
            text = " | ".join(
                s["sent"] for r in refs if (r["split"] == "train") == split_is_train for s in r["sentences"]
            )
            named = {(c, s) for c, s in held if f"{c} {s}" in text}
            assert named == (set() if split_is_train else set(held)), (dataset, split_is_train)


def test_panoptic_pngs_match_their_segments_info(world):
    coco = world / "coco"
    for split in ("train", "val"):
        panoptic = json.loads((coco / "annotations" / f"panoptic_{split}2017.json").read_text())
        isthing = {c["id"]: c["isthing"] for c in panoptic["categories"]}
        images = {im["id"]: im for im in panoptic["images"]}
        assert len(images) == {"train": 10, "val": 2}[split]
        for ann in panoptic["annotations"]:
            im = images[ann["image_id"]]
            assert Image.open(coco / f"{split}2017" / im["file_name"]).size == (im["width"], im["height"])
            rgb = np.asarray(
                Image.open(coco / "annotations" / f"panoptic_{split}2017" / ann["file_name"]), np.int64
            )
            ids = rgb[..., 0] + 256 * rgb[..., 1] + 256**2 * rgb[..., 2]
            infos = {s["id"]: s for s in ann["segments_info"]}
            assert set(np.unique(ids).tolist()) - {0} == set(infos)
            for sid, info in infos.items():
                ys, xs = np.nonzero(ids == sid)
                assert info["area"] == len(xs)
                assert info["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert sorted(isthing[s["category_id"]] for s in infos.values())[:2] == [
                0,
                0,
            ]  # two stuff regions


def test_narratives_join_to_their_captions_and_ground_existing_segments(world):
    ann_dir = world / "coco" / "annotations"
    res_ids = {im["id"] for im in _instances(world)["images"]}
    plural_seen = stuff_seen = False
    for split in ("train", "val"):
        panoptic = json.loads((ann_dir / f"panoptic_{split}2017.json").read_text())
        isthing = {c["id"]: c["isthing"] for c in panoptic["categories"]}
        segments = {a["image_id"]: {s["id"]: s for s in a["segments_info"]} for a in panoptic["annotations"]}
        narratives = json.loads((ann_dir / f"png_coco_{split}2017.json").read_text())
        assert sorted(int(n["image_id"]) for n in narratives) == sorted(segments)
        assert not res_ids & set(segments)
        for n in narratives:
            assert isinstance(n["image_id"], str)
            assert " ".join(s["utterance"] for s in n["segments"]) + "." == n["caption"]
            grounded = [s for s in n["segments"] if s["segment_ids"]]
            assert grounded
            for s in n["segments"]:
                assert s["noun"] == bool(s["segment_ids"])
                assert s["plural"] == (len(s["segment_ids"]) > 1)
                infos = [segments[int(n["image_id"])][int(i)] for i in s["segment_ids"]]
                plural_seen |= s["plural"]
                stuff_seen |= any(isthing[i["category_id"]] == 0 for i in infos)
    assert plural_seen and stuff_seen


def test_resolve_accepts_only_unambiguous_locations_and_relations():
    def obj(shape, colour, cx, cy):
        return SimpleNamespace(shape=shape, colour=colour, size="small", cx=cx, cy=cy, r=5.0)

    objs = [obj("circle", "red", 10, 50), obj("circle", "blue", 90, 50), obj("square", "red", 12, 20)]
    assert resolve(Query("location", shape="circle", loc="left"), objs, 100, 100) == [0]
    assert resolve(Query("location", loc="left"), objs, 100, 100) == []  # circle and square both far left
    assert resolve(Query("attribute", colour="red"), objs, 100, 100) == [0, 2]
    below = Query("relation", colour="red", rel="below", anchor=Query("attribute", shape="square"))
    assert resolve(below, objs, 100, 100) == [0]
    left_of = Query("relation", shape="circle", rel="left of", anchor=Query("attribute", colour="blue"))
    assert resolve(left_of, objs, 100, 100) == [0]
    assert resolve(
        Query("relation", rel="left of", anchor=Query("attribute", colour="blue")), objs, 100, 100
    ) == [0, 2]


@pytest.mark.parametrize("bad", [{"size": 16}, {"overlap": 1.5}, {"max_objects": 0}, {"n_res_images": -1}])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ConfigError):
        SyntheticConfig(**bad)


def test_too_few_images_for_the_held_out_pairs_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no-holdout-combos"):
        generate_world(tmp_path, SyntheticConfig(n_res_images=3, n_png_images=0, size=64))
    counts = generate_world(
        tmp_path, SyntheticConfig(n_res_images=3, n_png_images=0, size=64, holdout_combos=False)
    )
    assert counts["res_images"] == 3 and counts["holdout_pairs"] == 0


def test_the_real_loaders_read_the_world(world):
    from flmm.data.coco_masks import decode_segmentation
    from flmm.data.png import load_png_split, phrase_masks
    from flmm.data.refcoco import REFER_DATASETS, load_refer_split

    for dataset, (_, _, splits) in REFER_DATASETS.items():
        for split in splits:
            loaded = load_refer_split(world, dataset, split)
            assert loaded.objects
            for o in loaded.objects:
                im = loaded.images[o.image_id]
                assert im.path.is_file()
                assert decode_segmentation(o.segmentation, im.height, im.width, dataset).any()
    for split in ("train2017", "val2017"):
        narratives = load_png_split(world, split)
        assert len(narratives) == {"train2017": 10, "val2017": 2}[split]
        for n in narratives:
            assert phrase_masks(n).any(axis=(1, 2)).all()


def test_overlapping_objects_never_share_a_colour():
    from flmm.data.synthetic_scene import COLOURS, SHAPES, compose_scene

    allowed = [(c, s) for c in COLOURS for s in SHAPES]
    overlapping_pairs = 0
    for seed in range(30):
        scene = compose_scene(np.random.default_rng(seed), 96, 96, 6, 1.0, "flat", allowed, [])
        for i, a in enumerate(scene.objects):
            for b in scene.objects[i + 1 :]:
                if (a.full & b.full).any():
                    overlapping_pairs += 1
                    assert a.colour != b.colour
    assert overlapping_pairs > 0
