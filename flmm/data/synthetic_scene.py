"""Scenes of the synthetic world: coloured shapes on varied backgrounds, composed and rasterised with numpy.

`compose_scene` places objects (shape, colour, size band, position, optional occlusion by later objects)
and renders the image; each object keeps its full and its visible mask. `flmm.data.synthetic` writes the
scenes in the real dataset formats.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross")  # category id = index + 1
COLOURS = {
    "red": (215, 35, 40),
    "orange": (250, 135, 20),
    "yellow": (245, 215, 30),
    "green": (30, 170, 60),
    "blue": (35, 85, 225),
    "purple": (135, 50, 185),
    "pink": (245, 115, 190),
}
STUFF = {  # word: (COCO panoptic category id, name, supercategory, RGB); muted so shapes stand out
    "sky": (187, "sky-other-merged", "sky", (175, 205, 232)),
    "wall": (199, "wall-other-merged", "wall", (202, 192, 178)),
    "grass": (193, "grass-merged", "plant", (110, 138, 88)),
    "sand": (154, "sand", "ground", (208, 192, 152)),
    "snow": (159, "snow", "ground", (236, 238, 242)),
    "road": (149, "road", "ground", (108, 108, 114)),
    "floor": (190, "floor-other-merged", "floor", (150, 118, 92)),
}
LAYOUTS = (("sky", "grass"), ("sky", "sand"), ("sky", "snow"), ("sky", "road"), ("wall", "floor"))
BACKGROUNDS = ("flat", "gradient", "noise", "stripes", "regions")
SIZE_BANDS = {"small": (0.07, 0.09), "large": (0.17, 0.22)}  # radius / shorter image side
MIN_VISIBLE = 0.6


@dataclass
class SceneObject:
    """One shape; `polygon` is COCO [x0, y0, x1, ...]; `full` / `mask`: (H, W) bool, whole / visible."""

    shape: str
    colour: str
    size: str
    cx: float
    cy: float
    r: float
    polygon: list[float]
    full: np.ndarray
    mask: np.ndarray

    @property
    def occluded(self) -> bool:
        return int(self.mask.sum()) != int(self.full.sum())


@dataclass
class Scene:
    """`image` (H, W, 3) uint8; `stuff` maps "top"/"bottom" to (word, (H, W) bool region incl. objects)."""

    image: np.ndarray
    objects: list[SceneObject]
    stuff: dict[str, tuple[str, np.ndarray]]

    def things_mask(self) -> np.ndarray:
        """`(H, W)` bool: the pixels some object covers."""
        if not self.objects:
            return np.zeros(self.image.shape[:2], dtype=bool)
        return np.any([o.mask for o in self.objects], axis=0)


# shape: (vertex angles in turns clockwise from "up", radii in units of r); the diamond never tilts
_E = float(np.arctan(0.3) / (2 * np.pi))  # half-width of a cross arm, as an angle at the arm's tip
SHAPE_OUTLINES = {
    "circle": (np.arange(40) / 40, np.ones(40)),
    "square": (1 / 8 + np.arange(4) / 4, np.full(4, 1.06)),
    "triangle": (np.arange(3) / 3, np.ones(3)),
    "star": (np.arange(10) / 10, np.tile([1.0, 0.45], 5)),
    "diamond": (np.arange(4) / 4, np.array([1.0, 0.62, 1.0, 0.62])),
    "cross": ((np.arange(4)[:, None] / 4 + [-_E, _E, 1 / 8]).ravel(), np.tile([1.044, 1.044, 0.424], 4)),
}


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[float]:
    turns, radii = SHAPE_OUTLINES[shape]
    t = 2 * np.pi * turns - np.pi / 2 + (0.0 if shape == "diamond" else angle)
    pts = np.stack([cx + r * radii * np.cos(t), cy + r * radii * np.sin(t)], 1)
    return [round(float(v), 2) for v in pts.reshape(-1)]


def _rasterise(polygon: list[float], h: int, w: int) -> np.ndarray:
    """(H, W) bool exactly as pycocotools decodes the polygon annotation."""
    return mask_utils.decode(mask_utils.frPyObjects([polygon], h, w))[:, :, 0].astype(bool)


def _place(rng, w: int, h: int, objs: list[SceneObject], shape: str, colour: str, overlap: bool) -> bool:
    """Add one object where it keeps every object >= MIN_VISIBLE visible and overlaps none of its colour;
    False if no spot was found."""
    side = min(w, h)
    for size in ("large", "small") if rng.random() < 0.5 else ("small",):
        for _ in range(40):
            r = side * rng.uniform(*SIZE_BANDS[size])
            lo = 1.1 * r + 1
            if overlap and objs:
                o = objs[int(rng.integers(len(objs)))]
                a, d = rng.uniform(0, 2 * np.pi), (r + o.r) * rng.uniform(0.45, 0.95)
                cx, cy = np.clip(o.cx + d * np.cos(a), lo, w - lo), np.clip(o.cy + d * np.sin(a), lo, h - lo)
            else:
                cx, cy = rng.uniform(lo, w - lo), rng.uniform(lo, h - lo)
                if any(np.hypot(cx - o.cx, cy - o.cy) < 1.1 * (r + o.r) + 2 for o in objs):
                    continue
            poly = _polygon(shape, float(cx), float(cy), float(r), rng.uniform(-0.26, 0.26))
            full = _rasterise(poly, h, w)
            kept = [o.mask & ~full for o in objs]
            if full.sum() < 6 or any(k.sum() < MIN_VISIBLE * o.full.sum() for k, o in zip(kept, objs)):
                continue
            # Touching objects of one colour would merge into one blob: no visible boundary between them.
            if any(o.colour == colour and (o.full & full).any() for o in objs):
                continue
            for o, k in zip(objs, kept):
                o.mask = k
            cx, cy, r = float(cx), float(cy), float(r)
            objs.append(SceneObject(shape, colour, size, cx, cy, r, poly, full, full.copy()))
            return True
    return False


def _pick_combo(rng, objs, allowed: list, banned: list) -> tuple[str, str]:
    """Uniform over allowed pairs, but often sharing a shape or colour with a placed object (real scenes
    repeat categories, which is what makes location and relation expressions necessary)."""
    pool = [c for c in allowed if c not in banned]
    u = rng.random()
    if objs and u < 0.6:
        o = objs[int(rng.integers(len(objs)))]
        same = [c for c in pool if (c[0] == o.colour) + (c[1] == o.shape) >= (2 if u < 0.12 else 1)]
        pool = [c for c in same if u < 0.12 or (c[1] == o.shape) == (u < 0.4)] or same or pool
    return pool[int(rng.integers(len(pool)))]


def _smooth_noise(rng, h: int, w: int, amp: float, channels: int = 3) -> np.ndarray:
    """(H, W, channels) low-frequency noise: a coarse random grid resized bilinearly."""
    grid = rng.normal(0, amp, (channels, h // 12 + 2, w // 12 + 2)).astype(np.float32)
    return np.stack([np.asarray(Image.fromarray(g, "F").resize((w, h), Image.BILINEAR)) for g in grid], -1)


def _background(rng, w: int, h: int, kind: str, layout) -> tuple[np.ndarray, dict]:
    """(H, W, 3) float image and its stuff regions (only the "regions" kind has any)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)

    def neutral() -> np.ndarray:
        return np.clip(rng.uniform(70, 200) + rng.uniform(-18, 18, 3), 0, 255)

    if kind == "regions":
        top_word, bottom_word = layout
        horizon = h * rng.uniform(0.35, 0.6) + rng.uniform(-0.15, 0.15) * (xx - w / 2)
        top = yy < horizon
        sky = np.array(STUFF[top_word][3]) + 25 * (yy / h - 0.5)[..., None]
        ground = (
            np.array(STUFF[bottom_word][3]) + _smooth_noise(rng, h, w, 12, 1) + _smooth_noise(rng, h, w, 4)
        )
        return np.where(top[..., None], sky, ground), {"top": (top_word, top), "bottom": (bottom_word, ~top)}
    a, b = neutral(), neutral()
    theta = rng.uniform(0, 2 * np.pi)
    t = xx * np.cos(theta) + yy * np.sin(theta)
    if kind == "flat":
        img = np.broadcast_to(a, (h, w, 3))
    elif kind == "gradient":
        img = a + ((t - t.min()) / (np.ptp(t) + 1e-6))[..., None] * (b - a)
    elif kind == "noise":
        img = a + _smooth_noise(rng, h, w, 25, 1) + _smooth_noise(rng, h, w, 6) + rng.normal(0, 4, (h, w, 3))
    else:
        t = xx * np.cos(theta // (np.pi / 4) * np.pi / 4) + yy * np.sin(theta // (np.pi / 4) * np.pi / 4)
        img = np.where(((t // (rng.uniform(6, 16) / 2)) % 2 == 0)[..., None], a, b)
    return img, {}


def compose_scene(
    rng, w: int, h: int, n_objects: int, overlap: float, background: str, allowed: list, forced: list
) -> Scene:
    """Place `forced` (colour, shape) pairs first (each unique in the scene), then up to `n_objects` in all
    drawn from `allowed`; `overlap` is the chance that an object is put over an earlier one."""
    layout = LAYOUTS[int(rng.integers(len(LAYOUTS)))]
    img, stuff = _background(rng, w, h, background, layout)
    objs: list[SceneObject] = []
    for k in range(max(n_objects, len(forced))):
        colour, shape = forced[k] if k < len(forced) else _pick_combo(rng, objs, allowed, forced)
        placed = _place(rng, w, h, objs, shape, colour, bool(rng.random() < overlap))
        if not placed and k < len(forced):  # a held-out pair must make it in: allow it to overlap
            _place(rng, w, h, objs, shape, colour, True)
    img = img.copy()
    for o in objs:  # later objects cover earlier ones, as their visible masks say
        img[o.full] = np.array(COLOURS[o.colour]) + rng.integers(-10, 11, 3)
    return Scene(np.clip(np.rint(img), 0, 255).astype(np.uint8), objs, stuff)
