"""A synthetic reasoning split in ReasonSeg's on-disk format: questions whose answer is one object of a scene.

Scenes come from the synthetic world's composer (`compose_scene`, their own seed stream, so the RefCOCO and
PNG files of a world stay byte-identical); each image gets one question about one object, reached through
- an attribute ("Which shape is the green one?"),
- a relation to another object ("What is directly above the red circle?"),
- a comparison ("Which shape is the biggest in the picture?": the target's radius leads every other's by a
  clear margin),
- or a location ("Which object sits at the top of the image?").
A question is written only when it names the target and nothing else (`synthetic_text.resolve`, or the size
margin for comparisons). Half the images get a short query (a phrase-length question, `is_sentence` false)
and half a long one (an instruction sentence), as in LISA's split. The target's visible mask is stored as
its outer contours (LabelMe polygons, label "target"), which LISA's drawing turns back into the mask; the
expected answer (the referring phrase, e.g. "the small green triangle") is kept under `"answer"`, a key
LISA's readers ignore, for answer accuracy.

    ROOT/reason_seg/ReasonSeg/{val,test}/reason_NNNNNN.{json,jpg}
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from flmm.data.synthetic_scene import BACKGROUNDS, COLOURS, SHAPES, compose_scene
from flmm.data.synthetic_text import Query, resolve, unique_queries
from flmm.errors import ConfigError

REASON_SPLITS = (("val", 0.5), ("test", 0.5))
MAX_ATTEMPTS = 200  # scenes drawn for one image before its question kind is given up on
# A comparison's target must be this much larger (smaller) in radius than every other object.
SIZE_MARGIN = 1.25
KINDS = ("attribute", "relation", "comparison", "location")
_SHORT = {
    "attribute": "Which shape is {d}?",
    "relation": "What is {rel} the {a}?",
    "comparison": "Which shape is the {most}?",
    "location": "What is at the {loc}?",
}
_LONG = {
    "attribute": "Find the object in this picture that is {d}; there is only one like it.",
    "relation": "Look at the {a} and point out the object that is {rel} it.",
    "comparison": "Among all the shapes in the image, segment the one that is the {most}.",
    "location": "Segment the object that sits at the {loc} of the image.",
}
_REL_WORDS = {"above": "above", "below": "below", "left of": "left of", "right of": "right of"}
_REL_WORDS["near"] = "next to"


def answer_phrase(obj) -> str:
    """The phrase that answers a question about `obj`: "the small green triangle"."""
    return f"the {obj.size} {obj.colour} {obj.shape}"


def _describe(q: Query) -> str:
    return " ".join(w for w in (q.size, q.colour, q.shape or "shape") if w)


def _comparison(objs, ref: int) -> str | None:
    """'biggest' / 'smallest' when object `ref` leads every other by SIZE_MARGIN in radius, else None."""
    others = [o.r for i, o in enumerate(objs) if i != ref]
    if not others:
        return None
    if objs[ref].r >= SIZE_MARGIN * max(others):
        return "biggest"
    if objs[ref].r * SIZE_MARGIN <= min(others):
        return "smallest"
    return None


def questions(objs, ref: int, width: int, height: int) -> dict[str, dict]:
    """The question templates' fields per kind that single out object `ref` (a kind is absent when none
    does): `{kind: {"d"|"rel"|"a"|"most"|"loc": str}}`."""
    found: dict[str, dict] = {}
    if resolve(Query("attribute", colour=objs[ref].colour), objs, width, height) == [ref]:
        found["attribute"] = {"d": objs[ref].colour}
    for q in unique_queries(ref, objs, width, height):
        # The relation alone (no word about the target itself) must single it out.
        bare = Query("relation", rel=q.rel, anchor=q.anchor) if q.kind == "relation" else None
        if bare is not None and "relation" not in found and resolve(bare, objs, width, height) == [ref]:
            found["relation"] = {"rel": _REL_WORDS[q.rel], "a": _describe(q.anchor)}
        elif q.kind == "location" and q.n_attrs == 0 and "location" not in found:
            found["location"] = {"loc": q.loc}
    most = _comparison(objs, ref)
    if most is not None:
        found["comparison"] = {"most": f"{most} one"}
    return found


def question_texts(objs, ref: int, width: int, height: int) -> list[str]:
    """Every short and long question (all kinds) whose one answer is object `ref`; empty when none is."""
    found = questions(objs, ref, width, height)
    return [table[kind].format(**fields) for kind, fields in found.items() for table in (_SHORT, _LONG)]


def template_texts() -> list[str]:
    """The question templates with their fields blank, and every field word they can take."""
    texts = [re.sub(r"\{[a-z]+\}", " ", t) for table in (_SHORT, _LONG) for t in table.values()]
    return [*texts, *_REL_WORDS.values(), "biggest one smallest one"]


def _polygons(mask: np.ndarray) -> list[list[list[float]]]:
    """The outer contours of a `(H, W)` bool mask as LabelMe polygons `[[x, y], ...]` (>= 3 points)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    return [c[:, 0, :].astype(float).tolist() for c in contours if len(c) >= 3]


def _split_names(n: int, rng: np.random.Generator) -> list[str]:
    names = [split for split, share in REASON_SPLITS for _ in range(round(n * share))]
    names = (names + [REASON_SPLITS[0][0]] * n)[:n]
    rng.shuffle(names)
    return names


def write_reasonseg(out: str | Path, seed: int, n_images: int, size: int, max_objects: int) -> dict[str, int]:
    """Write `n_images` reasoning questions (one per image, `size` px square scenes of 2..`max_objects`
    objects) under `out`/reason_seg/ReasonSeg; return counts per split and per question kind."""
    if n_images and max_objects < 2:
        raise ConfigError("synthetic ReasonSeg: relations and comparisons need max_objects >= 2")
    root = Path(out) / "reason_seg" / "ReasonSeg"
    combos = [(c, s) for c in COLOURS for s in SHAPES]
    splits = _split_names(n_images, np.random.default_rng([seed, 7]))
    counts = dict.fromkeys([*(s for s, _ in REASON_SPLITS), *KINDS], 0)
    for idx, split in enumerate(splits):
        rng = np.random.default_rng([seed, 8, idx])
        kind = KINDS[idx % len(KINDS)]
        for _ in range(MAX_ATTEMPTS):  # a scene where the drawn object has a question of this kind
            bg = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
            scene = compose_scene(rng, size, size, int(rng.integers(2, max_objects + 1)), 0.2, bg, combos, [])
            ref = int(rng.integers(len(scene.objects)))
            fields = questions(scene.objects, ref, size, size).get(kind)
            if fields is not None and scene.objects[ref].mask.any():
                break
        else:
            raise ConfigError(f"synthetic ReasonSeg: no {kind} question in {MAX_ATTEMPTS} scenes ({size} px)")
        is_sentence = bool(idx // len(KINDS) % 2)
        text = (_LONG if is_sentence else _SHORT)[kind].format(**fields)
        name = f"reason_{idx:06d}"
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(scene.image).save(folder / f"{name}.jpg", quality=95)
        record = {
            "version": "synthetic",
            "shapes": [
                {"label": "target", "points": p, "shape_type": "polygon", "flags": {}}
                for p in _polygons(scene.objects[ref].mask)
            ],
            "imagePath": f"{name}.jpg",
            "imageHeight": size,
            "imageWidth": size,
            "text": [text],
            "is_sentence": is_sentence,
            "kind": kind,
            "answer": answer_phrase(scene.objects[ref]),
        }
        (folder / f"{name}.json").write_text(json.dumps(record), encoding="utf-8")
        counts[split] += 1
        counts[kind] += 1
    return counts
