"""Aya Vision (`AyaVisionForConditionalGeneration`, `CohereLabs/aya-vision-8b`): SigLIP tiles, Cohere 2.

The image path is InternVL's: the image processor (`GotOcr2ImageProcessor`, with the processor's
`crop_to_patches=True`) stretches the whole image onto a canvas of `cols x rows` square tiles of the tower's
input size s (364 in the processor's defaults), the arrangement whose aspect is closest to the image's
(`get_optimal_tiled_canvas`, between `min_patches` and `max_patches` tiles), cuts it into tiles row-major and,
when there is more than one tile, appends a thumbnail (the whole image resized to s x s) last. Each tile goes
through the SigLIP tower on its own: (s / patch)^2 patches (no CLS: `vision_feature_select_strategy="full"`);
the projector pixel-shuffles `downsample_factor` x `downsample_factor` neighbouring patches into one token
(row-major over the coarse grid), so g x g tokens per tile, g = s / patch / downsample_factor (13 at 8B).

What differs from InternVL is the prompt: per image the processor writes `<|START_OF_IMG|>`, then for each
tile `TILE_{i}` (i from 1) + `<|IMG_PATCH|>` x g^2, then `TILE_GLOBAL` + `<|IMG_PATCH|>` x g^2 for the
thumbnail, then `<|END_OF_IMG|>`; an image of one tile has only the `TILE_GLOBAL` block (that tile, the whole
image at s x s). The chat template's placeholder is `<image>`; the model's image token is `<|IMG_PATCH|>`.
Only `<|IMG_PATCH|>` positions receive features; the markers are text.

Two views, as InternVL's: 0 = the tile mosaic, `(rows * g, cols * g)` over the stretched image; 1 = the
thumbnail, g x g; a one-tile image fills view 0 and repeats it as view 1. `pixel_values` is
`(tiles, 3, s, s)` per image, all tiles of the batch concatenated for the forward; the processor drops
`num_patches`, so the tile grid is recomputed from the original image size (`image_sizes`).
"""

from __future__ import annotations

from transformers import AyaVisionForConditionalGeneration

from flmm.errors import ConfigError
from flmm.lmm.adapter import LMMImage
from flmm.lmm.families.internvl import InternVLAdapter
from flmm.lmm.layout import ImageLayout
from flmm.registry import LMM_ADAPTERS


@LMM_ADAPTERS.register_module()
class AyaVisionAdapter(InternVLAdapter):
    """Frozen `AyaVisionForConditionalGeneration`: per image `pixel_values (tiles, 3, s, s)` (row-major tiles,
    then the thumbnail when tiles > 1) and `image_sizes (2,)` (original height, width); C = 2 x L x H; the
    head's grid is `grid x grid` (default 24), as the mosaic's shape varies per image."""

    model_class = AyaVisionForConditionalGeneration
    # Cohere's turn markers, for a processor without a chat template (the hub's ships one).
    fallback_template = (
        "<|START_OF_TURN_TOKEN|><|USER_TOKEN|><image>{question}<|END_OF_TURN_TOKEN|>"
        "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>"
    )

    def check_model(self) -> None:
        strategy = self.lmm.config.vision_feature_select_strategy
        if strategy != "full":
            # SigLIP has no CLS: "default" would drop a real patch, and the projector's square reshape of
            # the (s / patch)^2 - 1 left would no longer be the tile's grid.
            raise ConfigError(
                f"vision_feature_select_strategy must be 'full' (SigLIP, no CLS), got {strategy!r}"
            )
        self._tile_side()

    @property
    def _tile_size(self) -> tuple[int, int]:
        # SigLIP's config holds one int, InternVL's vision config a (height, width) pair.
        size = int(self.lmm.config.vision_config.image_size)
        return (size, size)

    def _tile_side(self) -> int:
        """g, the side of one tile's token grid: s / patch patches, over `downsample_factor`."""
        config = self.lmm.config
        size, patch = int(config.vision_config.image_size), int(config.vision_config.patch_size)
        factor = int(config.downsample_factor)
        # The projector's pixel shuffle reshapes by int(sqrt(S)) and S / factor: anything inexact misplaces.
        if size % patch or (size // patch) % factor or size // patch < factor:
            raise ConfigError(
                f"Aya Vision tiles must give a square integer token grid: {size} px, patch {patch}, "
                f"downsample_factor {factor}"
            )
        return size // patch // factor

    def image_text(self, layout: ImageLayout, image: LMMImage) -> str:
        processor = self._processor()
        side = self._tile_side()
        # The processor counts tokens per tile from its own img_size / (patch_size * downsample_factor).
        per_tile = (processor.img_size // processor.patch_size) ** 2
        if per_tile != side * side:
            raise ConfigError(
                f"the processor's {per_tile} tokens per tile (img_size {processor.img_size}, patch "
                f"{processor.patch_size}) are not the model's {side * side}"
            )
        patches = processor.img_patch_token * per_tile
        tiles = layout.num_tokens // per_tile  # the tiles and, when more than one, the thumbnail
        blocks = [f"{processor.tile_token}_{i}{patches}" for i in range(1, tiles)]
        return (
            f"{processor.start_of_img_token}{''.join(blocks)}{processor.tile_global_token}{patches}"
            f"{processor.end_of_img_token}"
        )
