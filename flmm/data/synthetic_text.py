"""Language of the synthetic world: referring expressions that name exactly one object, and narratives.

An expression is first a `Query` (attributes, plus an absolute location or a relation to an anchor object)
that `resolve` evaluates against the scene; only queries that resolve to the referent alone are rendered
as text. Positions are judged strictly for the referent and loosely for everything else, so an object that
sits near a boundary can never make an accepted expression ambiguous. Objects are duck-typed: anything
with `shape, colour, size, cx, cy, r` (centre and radius in pixels) works.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from itertools import combinations

import numpy as np

RELATIONS = ("above", "below", "left of", "right of", "near")
STYLES = ("refcoco", "refcoco+", "refcocog")
SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
PLURALS = {"cross": "crosses"}
NUMBERS = ("two", "three", "four", "five", "six", "seven", "eight", "nine")
_ATTRS = ("colour", "size", "shape")
_AXES = {"left": ((0, -1),), "right": ((0, 1),), "top": ((1, -1),), "bottom": ((1, 1),)}
_AXES.update({f"{v} {u}": _AXES[v] + _AXES[u] for v in ("top", "bottom") for u in ("left", "right")})
LOCATIONS = (*_AXES, "middle")
_LOC_MARGIN = 0.15  # normalised distance the referent must lead every other candidate by, per axis
UNREFERRED = 0.15  # share of objects left without expressions, as in real RefCOCO
_ANCHOR_FORMS = (("colour", "shape"), ("shape",), ("size", "colour", "shape"), ("size", "shape"))


@dataclass(frozen=True)
class Query:
    """What an expression says: attributes (None = not mentioned), then a location or a relation."""

    kind: str  # "attribute" | "location" | "relation"
    colour: str | None = None
    size: str | None = None
    shape: str | None = None
    loc: str | None = None
    rel: str | None = None
    anchor: Query | None = None

    @property
    def n_attrs(self) -> int:
        return sum(getattr(self, a) is not None for a in _ATTRS)


def _attr_query(obj, attrs: tuple[str, ...], **extra) -> Query:
    return Query(**{a: getattr(obj, a) for a in attrs}, **extra)


def _locate(loc: str, cands: list[int], objs, width: int, height: int) -> list[int]:
    if not cands:
        return []
    pos = [(objs[i].cx / width - 0.5, objs[i].cy / height - 0.5) for i in cands]
    if loc == "middle":
        dist = [max(abs(u), abs(v)) for u, v in pos]
        inside = [i for i, d in zip(cands, dist) if d < 0.15]
        near = [i for i, d in zip(cands, dist) if d < 0.3]
        return inside if len(inside) == 1 and near == inside else []
    scores = [[sign * p[axis] for axis, sign in _AXES[loc]] for p in pos]
    best = max(range(len(cands)), key=lambda k: min(scores[k]))
    floor = 0.12 if len(cands) == 1 else -0.05  # a lone candidate must really be on that side
    clear = all(s > floor for s in scores[best]) and all(
        scores[best][a] - scores[k][a] >= _LOC_MARGIN
        for k in range(len(cands))
        if k != best
        for a in range(len(scores[best]))
    )
    return [cands[best]] if clear else []


def _direction(rel: str, t, a, scale: float) -> tuple[bool, bool]:
    """(strictly true, loosely true) for `t rel a` with rel one of above / below / left of / right of."""
    dx, dy = (t.cx - a.cx) / scale, (t.cy - a.cy) / scale
    along, across = {"above": (-dy, dx), "below": (dy, dx), "left of": (-dx, dy), "right of": (dx, dy)}[rel]
    return along > 0.12 and along > abs(across), along > 0.04 and along > 0.5 * abs(across)


def resolve(q: Query, objs, width: int, height: int) -> list[int]:
    """Indices of the objects a listener could take `q` to mean; an expression is usable iff this is [ref]."""
    cands = [
        i
        for i, o in enumerate(objs)
        if (q.shape is None or q.shape == o.shape)
        and (q.colour is None or q.colour == o.colour)
        and (q.size is None or q.size == o.size)
    ]
    if q.loc is not None:
        return _locate(q.loc, cands, objs, width, height)
    if q.rel is None:
        return cands
    anchors = resolve(q.anchor, objs, width, height)
    if len(anchors) != 1:
        return []
    a = objs[anchors[0]]
    cands = [i for i in cands if i != anchors[0]]
    scale = min(width, height)
    if q.rel == "near":
        dist = {i: float(np.hypot(objs[i].cx - a.cx, objs[i].cy - a.cy)) for i in cands}
        strict = [i for i in cands if dist[i] - objs[i].r - a.r < 0.12 * scale]
        return [i for i in cands if dist[i] < 2 * dist[strict[0]]] if len(strict) == 1 else strict
    judged = {i: _direction(q.rel, objs[i], a, scale) for i in cands}
    return [i for i in cands if judged[i][1]] if any(s for s, _ in judged.values()) else []


def unique_queries(ref: int, objs, width: int, height: int) -> list[Query]:
    """Every query of the three kinds that names object `ref` and nothing else, simplest first."""
    obj, out = objs[ref], []
    subsets = [c for n in range(4) for c in combinations(_ATTRS, n)]
    for attrs in subsets[1:]:
        out.append(_attr_query(obj, attrs, kind="attribute"))
    for attrs in [(), ("shape",), ("colour",), ("colour", "shape"), ("size", "shape")]:
        out += [_attr_query(obj, attrs, kind="location", loc=loc) for loc in LOCATIONS]
    others = sorted((i for i in range(len(objs)) if i != ref), key=lambda i: _dist(obj, objs[i]))
    for i in others[:2]:
        anchor = next(
            (
                q
                for q in (_attr_query(objs[i], f, kind="attribute") for f in _ANCHOR_FORMS)
                if resolve(q, objs, width, height) == [i]
            ),
            None,
        )
        if anchor is not None:
            for attrs in [("shape",), ("colour", "shape"), ("size", "shape"), ("colour",)]:
                out += [_attr_query(obj, attrs, kind="relation", rel=r, anchor=anchor) for r in RELATIONS]
    good = [q for q in out if resolve(q, objs, width, height) == [ref]]
    return sorted(good, key=lambda q: q.n_attrs)


def _dist(a, b) -> float:
    return float(np.hypot(a.cx - b.cx, a.cy - b.cy))


def _allowed(q: Query, style: str) -> bool:
    if style != "refcoco+":
        return True
    return q.kind == "attribute" or (q.kind == "relation" and q.rel in ("above", "below", "near"))


def _an(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _desc(q: Query, rng: np.random.Generator) -> str:
    words = [str(rng.choice(SIZE_WORDS[q.size]))] if q.size else []
    if q.colour:
        words.append(q.colour)
    words.append(q.shape or ("one" if words else "shape"))
    return " ".join(words)


_SHORT = {
    "attribute": ("{d}", "the {d}"),
    "left": ("{d} on the left", "left {d}", "the {d} on the left", "leftmost {d}"),
    "right": ("{d} on the right", "right {d}", "the {d} on the right", "rightmost {d}"),
    "top": ("{d} at the top", "top {d}", "the {d} at the top", "topmost {d}"),
    "bottom": ("{d} at the bottom", "bottom {d}", "the {d} at the bottom", "lowest {d}"),
    "corner": ("{d} in the {c} corner", "{c} {d}", "the {d} at the {c}"),
    "middle": ("{d} in the middle", "middle {d}", "the {d} in the center"),
    "above": ("{d} above the {a}", "the {d} above the {a}", "{d} that is above the {a}"),
    "below": ("{d} below the {a}", "the {d} under the {a}", "{d} that is below the {a}"),
    "left of": ("{d} left of the {a}", "the {d} to the left of the {a}"),
    "right of": ("{d} right of the {a}", "the {d} to the right of the {a}"),
    "near": ("{d} next to the {a}", "the {d} near the {a}"),
}
_LONG = {
    "attribute": ("{A} {d} in the picture", "the {d} that you can see in the image", "there is {A} {d} here"),
    "left": ("{A} {d} on the left side of the picture", "{A} {d} that is located at the left of the image"),
    "right": (
        "{A} {d} on the right side of the picture",
        "{A} {d} that is located at the right of the image",
    ),
    "top": ("{A} {d} at the top of the image", "{A} {d} placed near the top of the picture"),
    "bottom": ("{A} {d} at the bottom of the picture", "{A} {d} lying near the bottom of the image"),
    "corner": ("{A} {d} in the {c} corner of the image", "the {d} sitting in the {c} corner of the picture"),
    "middle": ("{A} {d} in the middle of the picture", "the {d} sitting in the center of the image"),
    "above": ("{A} {d} that is placed above the {a}", "{A} {d} sitting just above the {a}"),
    "below": ("{A} {d} that lies below the {a}", "{A} {d} sitting underneath the {a}"),
    "left of": ("{A} {d} located to the left of the {a}", "{A} {d} on the left side of the {a}"),
    "right of": ("{A} {d} located to the right of the {a}", "{A} {d} on the right side of the {a}"),
    "near": ("{A} {d} that is close to the {a}", "{A} {d} which is next to the {a}"),
}


def render(q: Query, style: str, rng: np.random.Generator) -> str:
    """The raw text of `q` in the phrasing of `style` (one of STYLES); templates are drawn from `rng`."""
    key = q.rel or q.loc or "attribute"
    key = "corner" if key in _AXES and len(_AXES[key]) == 2 else key
    template = str(rng.choice((_LONG if style == "refcocog" else _SHORT)[key]))
    d = _desc(q, rng)
    text = template.format(d=d, A=_an(d), c=q.loc, a=_desc(q.anchor, rng) if q.anchor else "")
    if style == "refcocog":
        return text[0].upper() + text[1:] + "."
    return text[0].upper() + text[1:] if rng.random() < 0.2 else text


def tokenize(raw: str) -> list[str]:
    """RefCOCO-style tokens: lower-cased words, punctuation marks as tokens of their own."""
    return re.findall(r"[a-z0-9]+|[^\sa-z0-9]", raw.lower())


def choose_expressions(
    ref: int, objs, queries: list[Query], style: str, rng, width: int, height: int, name_combo: bool = False
) -> list[str]:
    """1-3 distinct raw expressions for object `ref` from its unique `queries`, mixing kinds.

    With `name_combo` the first expression names the object's colour and shape together (used for the
    held-out colour/shape pairs, whose names must reach the evaluation splits).
    """
    pool: dict[str, list[Query]] = {}
    for q in queries:
        if _allowed(q, style):
            pool.setdefault(q.kind, []).append(q)
    if not pool:
        return []
    kinds = [str(k) for k in rng.permutation(sorted(pool))]
    picks = []
    combo = Query("attribute", colour=objs[ref].colour, shape=objs[ref].shape)
    if name_combo and resolve(combo, objs, width, height) == [ref]:
        picks.append(combo)
    n = int(rng.choice([1, 2, 3], p=[0.3, 0.4, 0.3]))
    for j in range(3 * n):
        if len(picks) >= n:
            break
        options = pool[kinds[j % len(kinds)]]
        picks.append(options[int(rng.integers(0, min(4, len(options))))])
    texts: list[str] = []
    for q in picks:
        if style == "refcocog":  # long sentences spell out every attribute; that only narrows the set
            full = replace(q, colour=objs[ref].colour, size=objs[ref].size, shape=objs[ref].shape)
            q = full if resolve(full, objs, width, height) == [ref] else q
        text = render(q, style, rng)
        if text.lower() not in {t.lower() for t in texts}:
            texts.append(text)
    return texts


def refer_objects(objs, width: int, height: int, holdout, rng) -> dict[str, list[tuple[int, list[str]]]]:
    """style -> [(object index, raw expressions)] for the referred objects of one scene.

    Objects with no unique expression are not referred, and neither is a random UNREFERRED share of the
    rest (at least one object per scene is). Objects whose (colour, shape) is in `holdout` are always
    referred, first by that colour and shape.
    """
    named = [(o.colour, o.shape) in holdout for o in objs]
    queries = [unique_queries(i, objs, width, height) for i in range(len(objs))]
    referred = [bool(q) and (nm or rng.random() >= UNREFERRED) for q, nm in zip(queries, named)]
    if not any(referred) and any(queries):
        referred[next(i for i, q in enumerate(queries) if q)] = True
    out: dict[str, list[tuple[int, list[str]]]] = {}
    for style in STYLES:
        said = [
            (i, choose_expressions(i, objs, queries[i], style, rng, width, height, named[i]))
            for i in range(len(objs))
            if referred[i]
        ]
        out[style] = [(i, texts) for i, texts in said if texts]
    return out


def ref_record(ref_id: int, ann: dict, split: str, texts: list[str], first_sent_id: int) -> dict:
    """One entry of a refs(unc|umd).p list, with the real keys, for COCO annotation `ann`."""
    sentences = []
    for k, raw in enumerate(texts):
        tokens = tokenize(raw)
        sentences.append(
            {"tokens": tokens, "raw": raw, "sent_id": first_sent_id + k, "sent": " ".join(tokens)}
        )
    return {
        "sent_ids": [s["sent_id"] for s in sentences],
        "file_name": f"COCO_train2014_{ann['image_id']:012d}_{ann['id']}.jpg",
        "ann_id": ann["id"],
        "ref_id": ref_id,
        "image_id": ann["image_id"],
        "split": split,
        "sentences": sentences,
        "category_id": ann["category_id"],
    }


_OPENINGS = (
    ("In this picture", "we can see"),
    ("In this image", "we can see"),
    ("Here", "we can see"),
    ("In this image", "I can see"),
    ("This picture shows",),
)
_ALL_THINGS = ("some shapes", "all the shapes", "these objects")
# Fixed words of narratives beyond the openings and _ALL_THINGS (stuff names come from the scene module).
_NARRATIVE_WORDS = "a an and on the in background under sky front of at top bottom left right middle"


def template_words() -> list[str]:
    """Every word the expression and narrative templates can put around the scene's own attribute words
    (colours, shapes, stuff, which the scene module lists), sorted: a tokenizer's vocabulary needs them."""
    texts = [t for table in (_SHORT, _LONG) for templates in table.values() for t in templates]
    texts += [" ".join(opening) for opening in _OPENINGS] + [*_ALL_THINGS, _NARRATIVE_WORDS]
    texts += [*RELATIONS, *LOCATIONS, *NUMBERS, *PLURALS.values(), "one shape"]
    texts += [w for words in SIZE_WORDS.values() for w in words]
    words = {w for text in texts for w in tokenize(re.sub(r"\{[a-zA-Z]\}", " ", text))}
    return sorted(words)


def _position_words(obj, width: int, height: int) -> str | None:
    u, v = obj.cx / width, obj.cy / height
    if u < 0.3:
        return "on the left"
    if u > 0.7:
        return "on the right"
    if v < 0.3:
        return "at the top"
    if v > 0.7:
        return "at the bottom"
    return "in the middle" if abs(u - 0.5) < 0.12 and abs(v - 0.5) < 0.12 else None


def narrative(
    image_id: int,
    things: list,
    stuff: dict[str, tuple[str, int]],
    width: int,
    height: int,
    rng: np.random.Generator,
) -> dict:
    """A PNG narrative: `things` are (object, segment id); `stuff` maps "top"/"bottom" to (word, segment id).

    Returns {image_id (str), caption, segments [{utterance, segment_ids [str], plural, noun}]} where the
    utterances joined by single spaces, plus a final '.', give the caption.
    """
    utts: list[tuple[str, list[int], bool, bool]] = []

    def say(text: str, ids=(), plural: bool = False) -> None:
        utts.append((text, list(ids), plural, bool(ids)))

    for text in _OPENINGS[int(rng.integers(0, len(_OPENINGS)))]:
        say(text)
    groups: dict[str, list] = {}
    for obj, sid in things:
        groups.setdefault(obj.shape, []).append((obj, sid))
    for k, (shape, members) in enumerate(groups.items()):
        if k:
            say("and")
        if len(members) == 1:
            obj, sid = members[0]
            size = f"{rng.choice(SIZE_WORDS[obj.size])} " if rng.random() < 0.5 else ""
            say(f"{_an(size or obj.colour)} {size}{obj.colour} {shape}", [sid])
            where = _position_words(obj, width, height)
            if where and rng.random() < 0.4:
                say(where)
        else:
            colours = sorted({o.colour for o, _ in members})
            noun = PLURALS.get(shape, shape + "s")
            words = f"{colours[0]} {noun}" if len(colours) == 1 else noun
            say(f"{NUMBERS[len(members) - 2]} {words}", [s for _, s in members], plural=True)
    if len(things) > 1 and rng.random() < 0.5:
        say("and")
        say(str(rng.choice(_ALL_THINGS)), [s for _, s in things], True)
    bottom, top = stuff.get("bottom"), stuff.get("top")
    if bottom:
        say(f"on the {bottom[0]}", [bottom[1]])
    if top and rng.random() < 0.5:
        say("and")
        say(f"the {top[0]}", [top[1]])
        say("in the background")
    elif top:
        say("under the sky" if top[0] == "sky" else f"in front of the {top[0]}", [top[1]])
    return {
        "image_id": str(image_id),
        "caption": " ".join(u[0] for u in utts) + ".",
        "segments": [
            {"utterance": t, "segment_ids": [str(i) for i in ids], "plural": p, "noun": n}
            for t, ids, p, n in utts
        ],
    }
