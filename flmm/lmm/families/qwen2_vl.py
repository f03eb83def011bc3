"""Qwen2-VL and Qwen2.5-VL: native resolution, one grid of the image's own aspect, M-RoPE positions.

The image processor `smart_resize`s the whole image to multiples of 28 px (no crop, no padding) and cuts it
into 14-px patches; `image_grid_thw = (1, h, w)` in patches, and the merger fuses 2 x 2 patches into one
LLM token, so an image has (h / 2) x (w / 2) tokens, row-major (Qwen2.5-VL's window attention permutes
patches inside the vision tower but restores the order). `pixel_values` is `(n_patches, 1176)` per image,
concatenated over the batch. The decoder's 3-D M-RoPE positions are computed by the model itself from
`image_grid_thw` and `mm_token_type_ids` (1 on image tokens): passing `position_ids` would switch M-RoPE
off, so none are passed (`computes_positions`). The grid is resized to `grid x grid` for the head; the
maps cover the whole image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration

from flmm.data.transforms import LMMInputs, ProcessorTransform
from flmm.lmm.adapter import LMMAdapter, LMMImage
from flmm.lmm.layout import ImageLayout, raster_cells
from flmm.registry import LMM_ADAPTERS


@LMM_ADAPTERS.register_module()
class Qwen2VLAdapter(LMMAdapter):
    """Frozen `Qwen2VLForConditionalGeneration`: per image `pixel_values (n_patches, D)` and
    `image_grid_thw (1, 3)`; the head's grid is `grid x grid` (default 24, LLaVA-1.5's)."""

    model_class = Qwen2VLForConditionalGeneration
    computes_positions = True
    fallback_template = (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{question}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )

    def __init__(self, *args, grid: int = 24, **kwargs):
        super().__init__(*args, **kwargs)
        self.grid = int(grid)

    @property
    def grid_size(self) -> tuple[int, int]:
        return (self.grid, self.grid)

    def image_transform(self) -> LMMInputs:
        return LMMInputs(ProcessorTransform(self._processor().image_processor, batched_keys=()))

    def layout(self, image: LMMImage) -> ImageLayout:
        frames, height, width = (int(v) for v in image["image_grid_thw"].reshape(3))
        merge = self.lmm.config.vision_config.spatial_merge_size
        if frames != 1:
            raise ValueError(
                f"an image has one temporal patch, got image_grid_thw {image['image_grid_thw'].tolist()}"
            )
        rows, cols = height // merge, width // merge
        return ImageLayout(raster_cells(rows, cols), ((rows, cols),))

    def vision_inputs(self, images: Sequence[LMMImage]) -> dict[str, torch.Tensor]:
        device = self.lmm.device
        pixels = torch.cat([image["pixel_values"] for image in images])
        grids = torch.cat([image["image_grid_thw"].reshape(1, 3) for image in images])
        return {
            "pixel_values": pixels.to(device=device, dtype=self.lmm.dtype),
            "image_grid_thw": grids.to(device),
        }

    def extra_inputs(self, input_ids: torch.Tensor, images: Sequence[LMMImage]) -> dict[str, torch.Tensor]:
        return {"mm_token_type_ids": (input_ids == self.image_token_id).long()}


@LMM_ADAPTERS.register_module()
class Qwen2_5_VLAdapter(Qwen2VLAdapter):
    """Frozen `Qwen2_5_VLForConditionalGeneration`: Qwen2-VL's layout and inputs."""

    model_class = Qwen2_5_VLForConditionalGeneration
