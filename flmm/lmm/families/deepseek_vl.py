"""DeepSeek-VL in transformers' own format (the `deepseek-community/*` -hf checkpoints).

`DeepseekVLForConditionalGeneration` (deepseek-vl-1.3b-chat): SigLIP at 384 px, patch 16, Llama decoder.
The image processor resizes the longest side to 384 (aspect kept, sides rounded, at least `min_size`) and
pads to a centred square in the mean colour: `pixel_values (3, 384, 384)`. SigLIP keeps every patch (no
CLS), the aligner is a per-token MLP, so the image is 24 x 24 = 576 tokens, row-major over the padded
square (the frame is the padded square, as LLaVA-1.5's pad mode); the prompt's `<image_placeholder>` is
repeated `num_image_tokens` times, nothing around it.

`DeepseekVLHybridForConditionalGeneration` (deepseek-vl-7b-chat, the hybrid): the same low-res SigLIP path
plus a SAM tower on `high_res_pixel_values (3, 1024, 1024)` (the image resized and padded the same way at
1024; the low-res input is that padded square resized to 384). The SAM features are resized and strided to
the SigLIP grid and concatenated per token, so the tokens and their cells are the low-res path's.

The image path is the family's own image processor (exactly the model's inputs) with the pad meta of its
resize and centred padding, which the generic `ProcessorTransform` (no padding) would not know.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers import DeepseekVLForConditionalGeneration, DeepseekVLHybridForConditionalGeneration

from flmm.data.transforms import LMMInputs, PadMeta, ProcessorTransform
from flmm.errors import ConfigError
from flmm.lmm.adapter import LMMAdapter, LMMImage
from flmm.lmm.layout import ImageLayout
from flmm.registry import LMM_ADAPTERS


def _square_side(size) -> int:
    """The side of a square `{"height": s, "width": s}` size (dict or SizeDict); ConfigError otherwise."""
    height, width = (size["height"], size["width"]) if isinstance(size, dict) else (size.height, size.width)
    if height != width:
        raise ConfigError(f"DeepSeek-VL image sizes are squares, got {height} x {width}")
    return int(height)


def square_pad_meta(height: int, width: int, side: int, min_size: int) -> PadMeta:
    """Where an image of `height x width` sits in DeepSeek-VL's padded square of `side`: longest side to
    `side` (both sides rounded, at least `min_size`), centred (before = pad // 2) on the short side."""
    delta = side / max(height, width)
    resized_h, resized_w = max(round(height * delta), min_size), max(round(width * delta), min_size)
    square = max(resized_h, resized_w)
    pad_h, pad_w = square - resized_h, square - resized_w
    return PadMeta(
        height,
        width,
        resized_h,
        resized_w,
        pad_h // 2,
        pad_h - pad_h // 2,
        pad_w // 2,
        pad_w - pad_w // 2,
        square,
    )


class DeepseekVLTransform(ProcessorTransform):
    """The image processor's `pixel_values (3, s, s)` (and the hybrid's `high_res_pixel_values (3, S, S)`),
    with the pad meta of its padded square (`frame_size`: the image processor's attribute holding the size
    whose resize and padding fix the frame)."""

    def __init__(self, image_processor, frame_size: str = "size"):
        super().__init__(image_processor, batched_keys=("pixel_values", "high_res_pixel_values"))
        self.frame_size = frame_size

    def __call__(self, image: np.ndarray) -> dict:
        out = super().__call__(image)
        side = _square_side(getattr(self.image_processor, self.frame_size))
        meta = square_pad_meta(*image.shape[:2], side, int(self.image_processor.min_size))
        out["pad_meta"] = meta.as_dict()
        return out


@LMM_ADAPTERS.register_module()
class DeepseekVLAdapter(LMMAdapter):
    """Frozen `DeepseekVLForConditionalGeneration`; `pixel_values (3, s, s)` per image (s: SigLIP's input),
    one (s / patch)^2 grid over the padded square (the boundary's default layout and inputs)."""

    model_class = DeepseekVLForConditionalGeneration
    fallback_template = "User: <image_placeholder>{question}\n\nAssistant:"

    def check_model(self) -> None:
        side = self.tower_side
        processor = self.processor
        if processor is not None and processor.num_image_tokens != side * side:
            raise ConfigError(
                f"the processor's num_image_tokens {processor.num_image_tokens} is not the model's "
                f"{side} x {side} image tokens"
            )

    def image_transform(self) -> LMMInputs:
        return LMMInputs(DeepseekVLTransform(self._processor().image_processor))


@LMM_ADAPTERS.register_module()
class DeepseekVLHybridAdapter(DeepseekVLAdapter):
    """Frozen `DeepseekVLHybridForConditionalGeneration`: as DeepSeek-VL, plus `high_res_pixel_values
    (3, S, S)` per image for the SAM tower; the tokens are the low-res grid's."""

    model_class = DeepseekVLHybridForConditionalGeneration

    def image_transform(self) -> LMMInputs:
        # The low-res input is the padded high-res square resized: the high-res padding fixes the frame.
        return LMMInputs(DeepseekVLTransform(self._processor().image_processor, frame_size="high_res_size"))

    def layout(self, image: LMMImage) -> ImageLayout:
        if "high_res_pixel_values" not in image:
            raise ValueError("DeepSeek-VL hybrid needs high_res_pixel_values (3, S, S) per image")
        return super().layout(image)

    def vision_inputs(self, images: Sequence[LMMImage]) -> dict[str, torch.Tensor]:
        high_res = torch.stack([image["high_res_pixel_values"] for image in images])
        return {
            **super().vision_inputs(images),
            "high_res_pixel_values": high_res.to(device=self.lmm.device, dtype=self.lmm.dtype),
        }
