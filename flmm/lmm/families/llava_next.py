"""LLaVA-NeXT / LLaVA-1.6 (`LlavaNextForConditionalGeneration`): two views, the base image and its tiles.

Image tokens in sequence order, as `LlavaNextModel.pack_image_features` packs them: the base crop's grid
(row-major), then the any-res tiles' grid unpadded to the image's aspect, each row closed by a newline
token (an image-token position that fills no cell). The any-res grid is computed with transformers' own
helpers (`get_anyres_image_grid_shape`, `unpad_image`) from `image_sizes` and `image_grid_pinpoints`. The
processor resizes the whole image into both views, so the maps cover the whole image (no padding).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import LlavaNextForConditionalGeneration
from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape, unpad_image

from flmm.data.collate import stack_padded
from flmm.data.transforms import LMMInputs, ProcessorTransform
from flmm.lmm.adapter import LMMImage
from flmm.lmm.families.llava import LlavaAdapter
from flmm.lmm.layout import ImageLayout, raster_cells
from flmm.registry import LMM_ADAPTERS


@LMM_ADAPTERS.register_module()
class LlavaNextAdapter(LlavaAdapter):
    """Frozen `LlavaNextForConditionalGeneration`: per image `pixel_values (n_crops, 3, s, s)` (crop 0 = the
    whole image resized to s x s) and `image_sizes (2,)` (original height, width); C = 2 x L x H. The
    feature strategy check and the base grid are LLaVA-1.5's."""

    model_class = LlavaNextForConditionalGeneration
    num_views = 2

    def image_transform(self) -> LMMInputs:
        return LMMInputs(ProcessorTransform(self._processor().image_processor))

    def layout(self, image: LMMImage) -> ImageLayout:
        if "image_sizes" not in image or image["pixel_values"].dim() != 4:
            raise ValueError(
                "LLaVA-NeXT needs pixel_values (n_crops, 3, s, s) and image_sizes (2,) per image"
            )
        side = self.tower_side
        height, width = self.unpadded_grid(image)
        cells = torch.cat([raster_cells(side, side), raster_cells(height, width, view=1, row_break=True)])
        return ImageLayout(cells, ((side, side), (height, width)))

    def unpadded_grid(self, image: LMMImage) -> tuple[int, int]:
        """(rows, cols) of the any-res tiles' token grid, unpadded to the image's aspect as the model does."""
        config = self.lmm.config
        side = self.tower_side
        size = image["image_sizes"].tolist()
        rows, cols = get_anyres_image_grid_shape(
            size, config.image_grid_pinpoints, config.vision_config.image_size
        )
        unpadded = unpad_image(torch.empty(0, rows * side, cols * side), size)
        return unpadded.shape[1], unpadded.shape[2]

    def vision_inputs(self, images: Sequence[LMMImage]) -> dict[str, torch.Tensor]:
        device = self.lmm.device
        pixels = stack_padded([image["pixel_values"] for image in images])
        sizes = torch.stack([image["image_sizes"] for image in images])
        return {
            "pixel_values": pixels.to(device=device, dtype=self.lmm.dtype),
            "image_sizes": sizes.to(device),
        }
