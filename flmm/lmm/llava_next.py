"""LLaVA-NeXT (LLaVA-1.6) adapter: base grid + any-res grid, resized to one grid, 2 x L x H channels.

The any-res grid of each sample is computed with transformers' own public helpers
(`get_anyres_image_grid_shape`, `unpad_image`) from `image_sizes` and the config's `image_grid_pinpoints`,
so it matches what `LlavaNextModel.pack_image_features` packs: base crop tokens (row-major), then the
unpadded any-res rows, each closed by a newline token.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers import LlavaNextForConditionalGeneration
from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape, unpad_image

from flmm.lmm.base import LMMAdapter
from flmm.lmm.grid import GridLayout
from flmm.registry import LMM_ADAPTERS


@LMM_ADAPTERS.register_module()
class LlavaNextAdapter(LMMAdapter):
    """Frozen `LlavaNextForConditionalGeneration`.

    Inputs are its image processor's output: `pixel_values (B, n_crops, 3, s, s)` (crop 0 = the whole image
    resized to s x s) and `image_sizes (B, 2)` (original height, width). The output grid is the base grid
    (s/p, s/p) and covers the whole original image (no padding).
    """

    model_class = LlavaNextForConditionalGeneration
    frame = "image"
    grid_blocks = 2

    def grid_layouts(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor | None) -> list[GridLayout]:
        if image_sizes is None:
            raise ValueError(
                "LLaVA-NeXT needs image_sizes (B, 2): the original (height, width) of each image"
            )
        if pixel_values.dim() != 5 or len(image_sizes) != len(pixel_values):
            raise ValueError(
                "pixel_values must be (B, n_crops, 3, s, s) with image_sizes (B, 2), got "
                f"{tuple(pixel_values.shape)} and {tuple(image_sizes.shape)}"
            )
        config = self.lmm.config
        vision = config.vision_config
        side = vision.image_size // vision.patch_size
        layouts = []
        for size in image_sizes.tolist():
            rows, cols = get_anyres_image_grid_shape(size, config.image_grid_pinpoints, vision.image_size)
            unpadded = unpad_image(torch.empty(0, rows * side, cols * side), size)
            layouts.append(GridLayout((side, side), (unpadded.shape[1], unpadded.shape[2])))
        return layouts

    def vision_inputs(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor | None) -> dict[str, Any]:
        return {"pixel_values": pixel_values, "image_sizes": image_sizes.to(pixel_values.device)}

    def processor_image_inputs(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor | None) -> dict:
        # The processor reads the crop size and each original size; a broadcast zero holds the former.
        crop = np.broadcast_to(np.float32(0), tuple(pixel_values.shape[-3:]))
        return {"pixel_values": [[crop]], "image_sizes": image_sizes.tolist()}
