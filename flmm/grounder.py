"""`Grounder`: a trained head (folder, hub repository or checkpoint) in three lines of Python.

    from flmm import Grounder
    grounder = Grounder.from_pretrained("runs/flmm_toy/head")
    masks = grounder.ground("image.jpg", ["the red circle", "the square"])  # [(H, W) bool] per phrase

`ask(image, question)` lets the frozen LMM answer with its own `generate()` and grounds what it says. Both
are `flmm.demo.pipeline.Demo.run` (the demo's pipeline, with its image cache), on an image given as a
path, a PIL image or an `(H, W, 3)` uint8 array.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from flmm.data.image_io import load_rgb, to_rgb
from flmm.demo.answer import GenerationSettings
from flmm.demo.pipeline import Demo, DemoResult

ImageInput = str | Path | Image.Image | np.ndarray


def as_rgb(image: ImageInput) -> np.ndarray:
    """`(H, W, 3)` uint8 RGB of a path, a PIL image (any mode) or an array of that shape and dtype."""
    if isinstance(image, (str, Path)):
        return load_rgb(image)
    if isinstance(image, Image.Image):
        return to_rgb(image, "the PIL image")
    if not isinstance(image, np.ndarray):
        kind = type(image).__name__
        raise ValueError(f"image: expected a path, a PIL image or an (H, W, 3) uint8 array, got a {kind}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image: expected an (H, W, 3) uint8 array, got {image.dtype} {image.shape}")
    return np.ascontiguousarray(image)


class Grounder:
    """The frozen LMM with a trained head (U-Net + SAM refiner, and the keyword selector if it has one)."""

    def __init__(self, demo: Demo):
        self.demo = demo

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path, device: str | None = None, overrides: Sequence[str] = ()
    ) -> Grounder:
        """Load a head folder of tools/export_head.py, a hub repository `owner/name` of one, or a
        tools/train.py checkpoint, with its LMM and SAM (`flmm.engine.evaluate.load_checkpoint`).

        device: cpu, cuda, cuda:1 (default: cuda when available). overrides: `key=value` changes of the
        head's config, e.g. `model.refiner.checkpoint=PATH` where SAM lives on this machine.
        """
        return cls(Demo.from_checkpoint(name_or_path, overrides, device))

    def ground(self, image: ImageInput, phrases: str | Sequence[str]) -> list[np.ndarray]:
        """One `(H, W)` bool mask per phrase, in order, at the image's own size (H, W)."""
        phrases = [phrases] if isinstance(phrases, str) else list(phrases)
        if not phrases or not all(p.strip() for p in phrases):
            raise ValueError(f"phrases: expected one or more non-empty phrases, got {phrases!r}")
        result = self.demo.run(as_rgb(image), phrases=phrases)
        return [phrase.mask for phrase in result.phrases]

    def ask(self, image: ImageInput, question: str, source: str = "auto", **generation: Any) -> DemoResult:
        """The LMM's answer to `question` and the masks of the phrases chosen from it.

        source: `answer` (the whole answer), `selector` (the head's keyword selector) or `auto` (the selector
        when the head has one). generation: `GenerationSettings` fields (max_new_tokens, sample,
        temperature, top_p, seed); greedy by default. The result's `answer` is the text and `phrases` hold
        each grounded phrase's text, span, box, score and `(H, W)` bool mask.
        """
        settings = GenerationSettings(**generation)
        return self.demo.run(as_rgb(image), question, settings=settings, source=source)
