"""Mistral 3 / Mistral Small 3.1 (`Mistral3ForConditionalGeneration`): Pixtral vision at native resolution.

The Pixtral image processor shrinks an image (never enlarges it) to fit `longest_edge`, then resizes each
side up to a multiple of the LLM cell, patch x spatial merge (14 x 2 = 28 px at 24B): the whole image,
slightly stretched, no crop, no padding; `image_sizes = (H', W')` is that size. The vision tower cuts it
into patches, the projector's patch merger unfolds 2 x 2 blocks, so the image fills (H' / 28) x (W' / 28)
cells, row-major. In the sequence each row is `[IMG]` x cols followed by `[IMG_BREAK]`, the last break
being `[IMG_END]`: the breaks are other token ids and get no image feature, so the image tokens (those of
`config.image_token_id`) are exactly the cells in raster order. `pixel_values` is `(N, 3, H_max, W_max)`,
each image zero-padded at the bottom and right, and `image_sizes (N, 2)` is required (the tower crops each
image back to it). The decoder is Mistral's (1-D RoPE; no sliding window at Small 3.1).

transformers' `PixtralProcessor` needs torchvision (its module imports the torchvision image processor),
so the adapter expands the placeholder itself (`image_text`) and runs the image processor itself
(`image_transform`, the PIL backend `PixtralImageProcessorPil` where torchvision is missing); without
torchvision a checkpoint's processor is `PixtralPilProcessor`, the same processing on the PIL backend.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from transformers import Mistral3ForConditionalGeneration, ProcessorMixin

from flmm.data.transforms import LMMInputs, ProcessorTransform
from flmm.errors import ConfigError
from flmm.lmm.adapter import LMMAdapter, LMMImage
from flmm.lmm.layout import ImageLayout, raster_cells
from flmm.lmm.loading import load_processor
from flmm.registry import LMM_ADAPTERS


def pixtral_placeholder(rows: int, cols: int, image: str, row_break: str, end: str) -> str:
    """What one image placeholder becomes for a `rows x cols` cell grid: per row `cols` image tokens and a
    row break, the last row's break replaced by the end token (Pixtral's expansion)."""
    if rows < 1 or cols < 1:
        raise ValueError(f"an image fills at least one cell, got {rows} x {cols}")
    row = image * cols
    return (row + row_break) * (rows - 1) + row + end


class PixtralPilProcessor(ProcessorMixin):
    """`PixtralProcessor` without torchvision: the same arguments, expansion and outputs
    (`input_ids`, `attention_mask`, `pixel_values (N, 3, H_max, W_max)`, `image_sizes (N, 2)`), built on
    any Pixtral image processor (the PIL backend where torchvision is missing).

    patch_size: the vision tower's patch; spatial_merge_size: the projector's merge (2 for Mistral 3; the
    image is resized to multiples of their product).
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        patch_size: int = 16,
        spatial_merge_size: int = 1,
        chat_template=None,
        image_token: str = "[IMG]",
        image_break_token: str = "[IMG_BREAK]",
        image_end_token: str = "[IMG_END]",
        **kwargs,
    ):
        # Other keys of a checkpoint's processor_config.json (processor_class, ...) are not arguments.
        super().__init__(image_processor, tokenizer, chat_template=chat_template)
        self.patch_size = int(patch_size)
        self.spatial_merge_size = int(spatial_merge_size)
        self.image_token = image_token
        self.image_break_token = image_break_token
        self.image_end_token = image_end_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        self.image_break_token_id = tokenizer.convert_tokens_to_ids(image_break_token)
        self.image_end_token_id = tokenizer.convert_tokens_to_ids(image_end_token)

    @property
    def image_token_ids(self) -> list[int]:
        return [self.image_token_id, self.image_break_token_id, self.image_end_token_id]

    @property
    def cell(self) -> int:
        """Pixels per LLM token side: patch x merge."""
        return self.patch_size * self.spatial_merge_size

    def _process_images(self, images, **kwargs):
        # The image processor is configured with the tower's patch; sides must be multiples of the cell.
        kwargs["patch_size"] = {"height": self.cell, "width": self.cell}
        return super()._process_images(images, **kwargs)

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        height, width = (int(v) for v in image_inputs["image_sizes"][image_idx])
        tokens = (self.image_token, self.image_break_token, self.image_end_token)
        return pixtral_placeholder(height // self.cell, width // self.cell, *tokens)

    @property
    def model_input_names(self) -> list[str]:
        return [*self.tokenizer.model_input_names, *self.image_processor.model_input_names, "image_sizes"]


@LMM_ADAPTERS.register_module()
class Mistral3Adapter(LMMAdapter):
    """Frozen `Mistral3ForConditionalGeneration`: per image `pixel_values (3, H', W')` and
    `image_sizes (2,)` (H', W' multiples of patch x merge); the head's grid is `grid x grid` (default 24)."""

    model_class = Mistral3ForConditionalGeneration
    fallback_template = "<s>[INST][IMG]{question}[/INST]"

    def __init__(self, *args, grid: int = 24, **kwargs):
        super().__init__(*args, **kwargs)
        self.grid = int(grid)

    @classmethod
    def load_processor(cls, source: str, offline: bool) -> ProcessorMixin:
        """The checkpoint's own `PixtralProcessor` where torchvision is present, else `PixtralPilProcessor`
        from the same files."""
        try:
            return load_processor(source, offline)
        except ImportError:
            return PixtralPilProcessor.from_pretrained(source, local_files_only=offline)

    def check_model(self) -> None:
        processor = self.processor
        if processor is None or not hasattr(processor, "spatial_merge_size"):
            return
        ours = (processor.patch_size, processor.spatial_merge_size)
        theirs = (self.lmm.config.vision_config.patch_size, self.lmm.config.spatial_merge_size)
        if ours != theirs:
            raise ConfigError(
                f"the processor's (patch_size, spatial_merge_size) {ours} differ from the model's {theirs}: "
                "its placeholder expansion would not match the model's image features"
            )

    @property
    def _cell(self) -> int:
        """Pixels per cell side: the tower's patch x the projector's merge."""
        return self.lmm.config.vision_config.patch_size * self.lmm.config.spatial_merge_size

    @property
    def grid_size(self) -> tuple[int, int]:
        return (self.grid, self.grid)

    def image_transform(self) -> LMMInputs:
        # PixtralProcessor passes patch x merge to its image processor (configured with the tower's patch)
        # at every call; a copy configured with it does the same through the shared transform.
        image_processor = copy.copy(self._processor().image_processor)
        image_processor.patch_size = {"height": self._cell, "width": self._cell}
        return LMMInputs(ProcessorTransform(image_processor))

    def _cells(self, image: LMMImage) -> tuple[int, int]:
        if "image_sizes" not in image or image["pixel_values"].dim() != 3:
            raise ValueError("Mistral 3 needs pixel_values (3, H, W) and image_sizes (2,) per image")
        height, width = (int(v) for v in image["image_sizes"].reshape(2))
        cell = self._cell
        if height % cell or width % cell:
            raise ValueError(f"image_sizes {(height, width)} are not multiples of the {cell}-px cell")
        return height // cell, width // cell

    def layout(self, image: LMMImage) -> ImageLayout:
        rows, cols = self._cells(image)
        # The row breaks are not image tokens: the image tokens are the cells in raster order.
        return ImageLayout(raster_cells(rows, cols), ((rows, cols),))

    def image_text(self, layout: ImageLayout, image: LMMImage) -> str:
        rows, cols = self._cells(image)
        processor = self._processor()
        return pixtral_placeholder(
            rows, cols, self.image_token, processor.image_break_token, processor.image_end_token
        )

    def vision_inputs(self, images: Sequence[LMMImage]) -> dict[str, torch.Tensor]:
        device = self.lmm.device
        height = max(int(image["pixel_values"].shape[1]) for image in images)
        width = max(int(image["pixel_values"].shape[2]) for image in images)
        # Zero padding at the bottom and right, as the image processor pads a batch.
        pixels = torch.stack(
            [
                F.pad(pixel, (0, width - pixel.shape[2], 0, height - pixel.shape[1]))
                for pixel in (image["pixel_values"] for image in images)
            ]
        )
        sizes = torch.stack([image["image_sizes"].reshape(2) for image in images])
        return {
            "pixel_values": pixels.to(device=device, dtype=self.lmm.dtype),
            "image_sizes": sizes.to(device),
        }
