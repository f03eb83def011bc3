"""LLaVA-OneVision (`LlavaOnevisionForConditionalGeneration`): LLaVA-NeXT's two views with a SigLIP tower.

One image per sample, as `LlavaOnevisionModel.pack_image_features` packs it: the base image (the whole
image squashed to s x s, s = 384 at 7B) as a (s / patch)^2 grid (27 x 27 = 729, row-major, feature strategy
"full": SigLIP has no CLS token, and unlike LLaVA-NeXT no newline closes the base), then the any-res tiles'
grid unpadded to the image's aspect, each row closed by a newline token (an image-token position filling
no cell). When the unpadded grid holds more than 1.1^2 times `anyres_max_N` base grids (N = 9 at 7B), the
model shrinks it bilinearly to `int(h // ratio) x int(w // ratio)`, ratio = sqrt(h * w / (N * side^2)),
before adding the newlines: that shrunk grid is view 1 then, still covering the unpadded image. Besides
`pixel_values` and `image_sizes` the model takes `batch_num_images` (1 per sample here: a sample with
several images would not be tiled). Both views cover the whole image (no padding).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from transformers import LlavaOnevisionForConditionalGeneration

from flmm.errors import ConfigError
from flmm.lmm.adapter import LMMImage
from flmm.lmm.families.llava_next import LlavaNextAdapter
from flmm.lmm.layout import ImageLayout, raster_cells
from flmm.registry import LMM_ADAPTERS

# pack_image_features shrinks the any-res grid only beyond this ratio to the allowed area.
SHRINK_ABOVE = 1.1


@LMM_ADAPTERS.register_module()
class LlavaOnevisionAdapter(LlavaNextAdapter):
    """Frozen `LlavaOnevisionForConditionalGeneration`: per image `pixel_values (n_crops, 3, s, s)` (crop 0 =
    the whole image resized to s x s), `image_sizes (2,)` (original height, width) and `batch_num_images
    (1,)`; C = 2 x L x H, grid = the base grid."""

    model_class = LlavaOnevisionForConditionalGeneration
    fallback_template = "<|im_start|>user <image>\n{question}<|im_end|><|im_start|>assistant\n"

    def check_model(self) -> None:
        aspect = self.lmm.config.vision_aspect_ratio
        if not aspect.startswith("anyres_max_") or not aspect.removeprefix("anyres_max_").isdigit():
            raise ConfigError(f"vision_aspect_ratio must be 'anyres_max_<N>', got {aspect!r}")

    def layout(self, image: LMMImage) -> ImageLayout:
        if "image_sizes" not in image or image["pixel_values"].dim() != 4:
            raise ValueError(
                "LLaVA-OneVision needs pixel_values (n_crops, 3, s, s) and image_sizes (2,) per image"
            )
        if int(image.get("batch_num_images", torch.ones(1)).reshape(-1)[0]) != 1:
            raise ValueError("LLaVA-OneVision: one image per sample (several are not tiled)")
        config = self.lmm.config
        side = self.tower_side
        height, width = self.unpadded_grid(image)
        max_grids = int(config.vision_aspect_ratio.removeprefix("anyres_max_"))
        ratio = math.sqrt(height * width / (max_grids * side**2))
        if ratio > SHRINK_ABOVE:
            height, width = int(height // ratio), int(width // ratio)
        cells = torch.cat([raster_cells(side, side), raster_cells(height, width, view=1, row_break=True)])
        return ImageLayout(cells, ((side, side), (height, width)))

    def vision_inputs(self, images: Sequence[LMMImage]) -> dict[str, torch.Tensor]:
        inputs = super().vision_inputs(images)
        # What the processor passes: one image per sample, so every image is tiled (any-res).
        inputs["batch_num_images"] = torch.ones(len(images), dtype=torch.long, device=self.lmm.device)
        return inputs
