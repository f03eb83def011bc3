"""Image preprocessing for the frozen LMM, with the meta data needed to map masks back.

`LlavaPadTransform` is LLaVA-1.5's "pad" mode built from albumentations: longest side to the LMM's size,
padded to a square with the CLIP mean colour, centred (before = pad // 2). `ProcessorTransform` defers to
a Hugging Face image processor (LLaVA-NeXT any-res, Qwen2-VL's native resolution), which decides its own
resizing and crops. `LMMInputs` groups what a transform makes for the LMM under one key, `lmm_image`, so
the data layer carries it without knowing what it holds. Masks are never transformed: losses and metrics
use them at the original resolution.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import albumentations as A
import cv2
import numpy as np
import torch

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class PadMeta:
    """Where the original image sits inside the square LMM input of side `size`."""

    orig_h: int
    orig_w: int
    resized_h: int
    resized_w: int
    pad_top: int
    pad_bottom: int
    pad_left: int
    pad_right: int
    size: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class LlavaPadTransform:
    """`(H, W, 3)` uint8 RGB -> `pixel_values (3, size, size)` float32, normalised, plus `PadMeta`."""

    def __init__(self, size: int = 336, mean=CLIP_MEAN, std=CLIP_STD):
        self.size = int(size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self._resize = A.LongestMaxSize(max_size=self.size, interpolation=cv2.INTER_CUBIC)
        self._pad = A.PadIfNeeded(
            min_height=self.size,
            min_width=self.size,
            position="center",
            border_mode=cv2.BORDER_CONSTANT,
            fill=tuple(round(255 * m) for m in self.mean),
        )
        self._normalize = A.Normalize(mean=self.mean, std=self.std, max_pixel_value=255.0)

    def __call__(self, image: np.ndarray) -> dict:
        orig_h, orig_w = image.shape[:2]
        resized = self._resize(image=image)["image"]
        rh, rw = resized.shape[:2]
        padded = self._pad(image=resized)["image"]
        pad_h, pad_w = self.size - rh, self.size - rw
        meta = PadMeta(
            orig_h=orig_h,
            orig_w=orig_w,
            resized_h=rh,
            resized_w=rw,
            pad_top=pad_h // 2,
            pad_bottom=pad_h - pad_h // 2,
            pad_left=pad_w // 2,
            pad_right=pad_w - pad_w // 2,
            size=self.size,
        )
        normalised = self._normalize(image=padded)["image"]
        pixel_values = torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1)))
        return {"pixel_values": pixel_values, "pad_meta": meta.as_dict()}


class ProcessorTransform:
    """Defer to a Hugging Face image processor (e.g. LLaVA-NeXT any-res, Qwen2-VL).

    Returns the processor's tensors for the one image, the batch dimension removed from `batched_keys`
    (`pixel_values (n_crops, 3, h, w)`, `image_sizes (2,)`) and kept on the others (Qwen2-VL's
    `pixel_values (n_patches, D)` has no batch dimension), and a `PadMeta` whose content fills the whole
    square (no padding): these processors resize the whole image, so the maps stretched over it cover it.
    """

    def __init__(self, image_processor, batched_keys: tuple[str, ...] = ("pixel_values", "image_sizes")):
        self.image_processor = image_processor
        self.batched_keys = tuple(batched_keys)

    def __call__(self, image: np.ndarray) -> dict:
        out = self.image_processor(images=image, return_tensors="pt")
        h, w = image.shape[:2]
        side = max(h, w)
        meta = PadMeta(h, w, side, side, 0, 0, 0, 0, side)
        result = {key: value[0] if key in self.batched_keys else value for key, value in out.items()}
        result["pad_meta"] = meta.as_dict()
        return result


class LMMInputs:
    """Wrap a transform: its tensors go under `lmm_image` (a dict, what the LMM takes for this image), its
    `pad_meta` stays beside them. Picklable, for data workers."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, image: np.ndarray) -> dict:
        out = dict(self.transform(image))
        return {"pad_meta": out.pop("pad_meta"), "lmm_image": out}
