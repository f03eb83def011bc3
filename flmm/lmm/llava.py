"""LLaVA-1.5 adapter: one square grid of image tokens (336 / 14 = 24 x 24 = 576 for the 7B checkpoint)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers import LlavaForConditionalGeneration

from flmm.lmm.base import LMMAdapter
from flmm.lmm.grid import GridLayout
from flmm.registry import LMM_ADAPTERS


@LMM_ADAPTERS.register_module()
class LlavaAdapter(LMMAdapter):
    """Frozen `LlavaForConditionalGeneration`; `pixel_values` is `(B, 3, s, s)` with s the tower's image size.

    The grid covers the square `pixel_values` frame (the data layer's padding included), `(s/p, s/p)` for
    patch size p. `image_sizes` is not used.
    """

    model_class = LlavaForConditionalGeneration
    frame = "pixel_values"
    grid_blocks = 1

    def grid_layouts(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor | None) -> list[GridLayout]:
        vision = self.lmm.config.vision_config
        expected = (3, vision.image_size, vision.image_size)
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"pixel_values must be (B, {', '.join(map(str, expected))}), got {tuple(pixel_values.shape)}"
            )
        side = vision.image_size // vision.patch_size
        return [GridLayout((side, side))] * pixel_values.shape[0]

    def vision_inputs(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor | None) -> dict[str, Any]:
        return {"pixel_values": pixel_values}

    def processor_image_inputs(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor | None) -> dict:
        # The processor only reads the image's height and width; a broadcast zero holds them without a copy.
        stand_in = np.broadcast_to(np.float32(0), tuple(pixel_values.shape[1:]))
        return {"pixel_values": [stand_in] * pixel_values.shape[0]}
