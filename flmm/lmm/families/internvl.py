"""InternVL 2.5 / 3 in transformers' own format (`InternVLForConditionalGeneration`, the `-hf` checkpoints).

The image processor (`GotOcr2ImageProcessor`, with the processor's `crop_to_patches=True`) stretches the
whole image onto a canvas of `cols x rows` square tiles of the tower's input size s (448 at 8B), the tile
arrangement whose aspect is closest to the image's (`get_optimal_tiled_canvas`, between `min_patches` and
`max_patches` tiles), cuts it into tiles row-major and, when there is more than one tile, appends a
thumbnail (the whole image resized to s x s) last. Each tile goes through the vision tower on its own:
(s / patch)^2 patches, CLS dropped, pixel shuffle 0.5 (2 x 2 neighbouring patches -> one token, row-major),
so g x g tokens per tile (g = 16 at 8B), tile after tile, in the prompt as
`<img>` + `<IMG_CONTEXT>` x (g^2 x tiles) + `</img>`; only `<IMG_CONTEXT>` positions receive features.

Two views: 0 = the tile mosaic, `(rows * g, cols * g)` over the stretched image; 1 = the thumbnail, g x g.
An image of one tile has no thumbnail, but that tile *is* the whole image resized to s x s, i.e. what a
thumbnail shows: its tokens fill view 0 and view 1 repeats view 0, so every sample has the same two views.
`pixel_values` is `(tiles, 3, s, s)` per image, all tiles of the batch concatenated for the forward. The
processor drops `num_patches`, so the tile grid is recomputed from the original image size (kept as
`image_sizes`) with the image processor's own helper. Both views cover the whole image (no padding).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from transformers import InternVLForConditionalGeneration
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

from flmm.data.transforms import LMMInputs, ProcessorTransform
from flmm.errors import ConfigError
from flmm.lmm.adapter import LMMAdapter, LMMImage
from flmm.lmm.layout import ImageLayout, RepeatedViewLayout, raster_cells
from flmm.registry import LMM_ADAPTERS


class InternVLTransform(ProcessorTransform):
    """`ProcessorTransform` (`pixel_values (tiles, 3, s, s)`, `num_patches (1,)`) that also keeps the
    original `image_sizes (2,)` (height, width), from which the layout recomputes the tile grid."""

    def __init__(self, image_processor):
        super().__init__(image_processor, batched_keys=())

    def __call__(self, image: np.ndarray) -> dict:
        out = super().__call__(image)
        out["image_sizes"] = torch.tensor(image.shape[:2], dtype=torch.long)
        return out


@LMM_ADAPTERS.register_module()
class InternVLAdapter(LMMAdapter):
    """Frozen `InternVLForConditionalGeneration`: per image `pixel_values (tiles, 3, s, s)` (row-major tiles,
    then the thumbnail when tiles > 1) and `image_sizes (2,)` (original height, width); C = 2 x L x H; the
    head's grid is `grid x grid` (default 24, LLaVA-1.5's), as the mosaic's shape varies per image."""

    model_class = InternVLForConditionalGeneration
    num_views = 2
    fallback_template = "<|im_start|>user\n<IMG_CONTEXT>\n{question}<|im_end|>\n<|im_start|>assistant\n"

    def __init__(self, *args, grid: int = 24, **kwargs):
        super().__init__(*args, **kwargs)
        self.grid = int(grid)

    def check_model(self) -> None:
        config = self.lmm.config
        strategy = config.vision_feature_select_strategy
        if strategy != "default":
            # "full" would keep the CLS token, which the model's own square reshape of the patches refuses.
            raise ConfigError(
                f"vision_feature_select_strategy must be 'default' (CLS dropped), got {strategy!r}"
            )
        if self.capture == "hooked" and getattr(self.text_config(), "model_type", None) == "gpt_oss":
            # Attention sinks take softmax mass the recomputed rows would not know about.
            raise ConfigError("InternVL with a GPT-OSS decoder (attention sinks): use capture='eager'")
        self._tile_side()

    @property
    def _tile_size(self) -> tuple[int, int]:
        """(height, width) in pixels of a tile, the vision tower's input."""
        return tuple(int(v) for v in self.lmm.config.vision_config.image_size)

    def _tile_side(self) -> int:
        """g, the side of one tile's token grid: (s / patch) patches, halved by the pixel shuffle."""
        config = self.lmm.config
        (height, width), (patch_h, patch_w) = self._tile_size, config.vision_config.patch_size
        rows = height // patch_h * config.downsample_ratio
        cols = width // patch_w * config.downsample_ratio
        if rows != cols or rows != int(rows) or rows < 1:
            raise ConfigError(
                f"InternVL tiles must give a square integer token grid: {height}x{width} px, patch "
                f"{patch_h}x{patch_w}, downsample_ratio {config.downsample_ratio}"
            )
        return int(rows)

    @property
    def grid_size(self) -> tuple[int, int]:
        return (self.grid, self.grid)

    def image_transform(self) -> LMMInputs:
        image_processor = copy.deepcopy(self._processor().image_processor)
        # InternVLProcessor tiles by default (its images_kwargs say crop_to_patches=True) whatever the image
        # processor's own default, which hub configs leave False.
        image_processor.crop_to_patches = True
        return LMMInputs(InternVLTransform(image_processor))

    def _tile_grid(self, image_size: Sequence[int]) -> tuple[int, int]:
        """(rows, cols) of tiles the image processor cuts an image of `image_size` (height, width) into."""
        image_processor = self._processor().image_processor
        max_patches, min_patches = int(image_processor.max_patches), int(image_processor.min_patches)
        if max_patches <= 1:  # the image processor does not tile then
            return (1, 1)
        size = image_processor.size
        tile = (size["height"], size["width"]) if isinstance(size, dict) else (size.height, size.width)
        cols, rows = get_optimal_tiled_canvas(tuple(image_size), tile, min_patches, max_patches)
        return (rows, cols)

    def layout(self, image: LMMImage) -> ImageLayout:
        pixels = image["pixel_values"]
        if "image_sizes" not in image or pixels.dim() != 4 or tuple(pixels.shape[-2:]) != self._tile_size:
            raise ValueError(
                f"InternVL needs pixel_values (tiles, 3, {self._tile_size[0]}, {self._tile_size[1]}) and "
                "image_sizes (2,) per image (InternVLAdapter.image_transform)"
            )
        rows, cols = self._tile_grid([int(v) for v in image["image_sizes"].reshape(2)])
        tiles = rows * cols
        if pixels.shape[0] != tiles + (tiles > 1):
            raise ValueError(
                f"an image of size {image['image_sizes'].tolist()} has {rows} x {cols} tiles"
                f"{' + a thumbnail' if tiles > 1 else ''}, got {pixels.shape[0]} in pixel_values"
            )
        side = self._tile_side()
        tile_cells = raster_cells(side, side)
        cells = [tile_cells + torch.tensor([0, t // cols * side, t % cols * side]) for t in range(tiles)]
        shapes = ((rows * side, cols * side), (side, side))
        if tiles == 1:
            return RepeatedViewLayout(cells[0], shapes)
        return ImageLayout(torch.cat([*cells, raster_cells(side, side, view=1)]), shapes)

    def image_text(self, layout: ImageLayout, image: LMMImage) -> str:
        processor = self._processor()
        side = self._tile_side()
        if processor.image_seq_length != side * side:
            raise ConfigError(
                f"the processor's image_seq_length {processor.image_seq_length} is not the model's "
                f"{side * side} tokens per tile"
            )
        context = self.image_token * layout.num_tokens
        return f"{processor.start_image_token}{context}{processor.end_image_token}"

    def vision_inputs(self, images: Sequence[LMMImage]) -> dict[str, torch.Tensor]:
        pixels = torch.cat([image["pixel_values"] for image in images])
        return {"pixel_values": pixels.to(device=self.lmm.device, dtype=self.lmm.dtype)}
