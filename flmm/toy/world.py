"""Scene pools for pretraining the toy models: fresh scenes of the synthetic world, never its own images.

Scenes are drawn like the world's RefCOCO train images (`flmm.data.synthetic.sample_scene`) from a seed
stream of their own, without the held-out (colour, shape) pairs, so no val/test image or held-out pair is
ever seen in pretraining. `lmm_pool` keeps what the LMM may learn from: its input image and the language
facts of every object (attributes, a coarse location word, unique referring queries, the reasoning questions
it answers) with one narrative of the scene. `sam_pool` keeps the
images and visible object masks, for SAM's promptable objective.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from flmm.data.synthetic import SyntheticConfig, sample_scene, train_pairs
from flmm.data.synthetic_reason import question_texts
from flmm.data.synthetic_scene import Scene
from flmm.data.synthetic_text import narrative, unique_queries
from flmm.toy.captions import ObjectFacts, where_words

# Seed-stream tags: pretraining scenes never share a random stream with the world's images (tags 0-4).
STREAMS = {"lmm": 11, "lmm_eval": 12, "sam": 13, "sam_eval": 14}


@dataclass
class LmmPool:
    """N scenes for the LMM: `pixel_values (N, 3, s, s)` float16 (LLaVA pad-mode inputs), their objects'
    facts and one PNG-style narrative each."""

    pixel_values: torch.Tensor
    objects: list[list[ObjectFacts]]
    narratives: list[str]

    def __len__(self) -> int:
        return len(self.objects)


@dataclass
class SamPool:
    """N scenes for SAM: uint8 images `(H_i, W_i, 3)` and visible masks `(K_i, H_i, W_i)` bool."""

    images: list[np.ndarray]
    masks: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.images)


def scenes(world: SyntheticConfig, n: int, seed: int, stream: str) -> list[Scene]:
    """`n` scenes of stream `stream` (a key of STREAMS); the same arguments give the same scenes."""
    allowed = train_pairs(world)
    return [sample_scene(np.random.default_rng([seed, STREAMS[stream], i]), world, allowed) for i in range(n)]


def object_facts(scene: Scene) -> list[ObjectFacts]:
    """The language facts of every object of `scene`."""
    h, w = scene.image.shape[:2]
    return [
        ObjectFacts(
            o.shape,
            o.colour,
            o.size,
            where_words(o.cx, o.cy, w, h),
            tuple(unique_queries(k, scene.objects, w, h)),
            tuple(question_texts(scene.objects, k, w, h)),
        )
        for k, o in enumerate(scene.objects)
    ]


def scene_narrative(scene: Scene, rng: np.random.Generator) -> str:
    """A PNG-style narrative of `scene`, written as the world writes its PNG captions."""
    h, w = scene.image.shape[:2]
    things = scene.things_mask()
    stuff = {p: (word, 0) for p, (word, region) in scene.stuff.items() if (region & ~things).any()}
    return narrative(0, [(o, 1) for o in scene.objects], stuff, w, h, rng)["caption"]


def lmm_pool(
    world: SyntheticConfig, n: int, seed: int, stream: str, transform: Callable[[np.ndarray], dict]
) -> LmmPool:
    """Scenes turned into the LMM's inputs by `transform` (the grounding pipeline's own image transform)."""
    drawn = scenes(world, n, seed, stream)
    pixels = torch.stack([transform(s.image)["pixel_values"] for s in drawn]).half()
    narratives = [
        scene_narrative(s, np.random.default_rng([seed, STREAMS[stream], i, 1])) for i, s in enumerate(drawn)
    ]
    return LmmPool(pixels, [object_facts(s) for s in drawn], narratives)


def sam_pool(world: SyntheticConfig, n: int, seed: int, stream: str) -> SamPool:
    """Scenes with their objects' visible masks (scenes whose objects are all hidden are dropped)."""
    images, masks = [], []
    for s in scenes(world, n, seed, stream):
        visible = [o.mask for o in s.objects if o.mask.any()]
        if visible:
            images.append(s.image)
            masks.append(np.stack(visible))
    return SamPool(images, masks)
