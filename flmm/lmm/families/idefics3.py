"""Idefics3 (`Idefics3ForConditionalGeneration`, Idefics3-8B-Llama3): SigLIP tiles + a global image, Llama.

The image processor resizes an image so its longest edge is `size["longest_edge"]` (aspect kept, even
sides), then rounds each side *up* to a multiple of the tile side s = `max_image_size["longest_edge"]` (a
slight stretch, no padding) and cuts it into `rows x cols` tiles of s x s, row-major; when there is more
than one tile it appends the global image (the whole image squashed to s x s) LAST. An image that fits one
tile is not split (rows = cols = 0): its one frame is the whole image squashed to s x s. Each frame goes
through the vision tower on its own, (s / patch)^2 patches, and the connector's pixel shuffle folds
`scale_factor^2` neighbouring patches into one token, row-major, so g x g tokens per frame (g = 13 at 8B:
364 / 14 / 2). The prompt's `<image>` becomes, per tile, `<fake_token_around_image><row_r_col_c>` +
`<image>` x g^2, a newline after each tile row, then `\\n<fake_token_around_image><global-img>` + `<image>`
x g^2 + `<fake_token_around_image>`; only `<image>` positions receive features.

Two views: 0 = the tile mosaic, `(rows * g, cols * g)` over the (stretched) image; 1 = the global image,
g x g. An unsplit image's one frame *is* a global image; its tokens fill view 0 and view 1 repeats view 0
(as InternVL's one-tile images), so every sample has the same two views. The processor drops rows / cols
from its output; the image path keeps them (`tile_grid`), asking the image processor for them as the
processor itself does. `pixel_values` is `(frames, 3, s, s)` per image, zero-padded to
`(B, frames_max, 3, s, s)` for the forward with `pixel_attention_mask (B, frames_max, s, s)`, as the
image processor pads a batch (the model drops all-zero frames).

The decoder is `model.text_model` (not `language_model`): `get_decoder()` finds it through the base model.

SmolVLM (`SmolVLMForConditionalGeneration`) is the same architecture and expansion (g = 8 at 256M / 500M).
Its `SmolVLMProcessor` refuses to be built without `num2words`, which only its video prompts use (frame
counts in words), and has a video slot: without them the processor is `SmolVLMImageOnlyProcessor`, the
same image processing and expansion.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from transformers import (
    AutoImageProcessor,
    AutoTokenizer,
    Idefics3ForConditionalGeneration,
    ProcessorMixin,
    SmolVLMForConditionalGeneration,
    SmolVLMProcessor,
)

from flmm.data.collate import stack_padded
from flmm.data.transforms import LMMInputs, ProcessorTransform
from flmm.errors import ConfigError
from flmm.lmm.adapter import LMMAdapter, LMMImage
from flmm.lmm.layout import ImageLayout, RepeatedViewLayout, raster_cells
from flmm.lmm.loading import load_processor, saved_processor_kwargs, without_video
from flmm.registry import LMM_ADAPTERS


class Idefics3Transform(ProcessorTransform):
    """`ProcessorTransform` -> `pixel_values (frames, 3, s, s)`, `pixel_attention_mask (frames, s, s)` and
    `tile_grid (2,)` long (rows, cols of tiles; 0, 0 for an unsplit image), which the processor computes
    but does not return."""

    def __init__(self, image_processor):
        image_processor = copy.deepcopy(image_processor)
        # What Idefics3Processor asks its image processor for (its images_kwargs), to build the expansion.
        image_processor.return_row_col_info = True
        super().__init__(image_processor, batched_keys=("pixel_values", "pixel_attention_mask"))

    def __call__(self, image: np.ndarray) -> dict:
        out = super().__call__(image)
        rows, cols = (int(torch.as_tensor(out.pop(key)).reshape(-1)[0]) for key in ("rows", "cols"))
        out["tile_grid"] = torch.tensor([rows, cols], dtype=torch.long)
        return out


@LMM_ADAPTERS.register_module()
class Idefics3Adapter(LMMAdapter):
    """Frozen `Idefics3ForConditionalGeneration`: per image `pixel_values (frames, 3, s, s)` (row-major
    tiles, then the global image when split), `pixel_attention_mask (frames, s, s)` and `tile_grid (2,)`;
    C = 2 x L x H; the head's grid is `grid x grid` (default 24), as the mosaic's shape varies per image."""

    model_class = Idefics3ForConditionalGeneration
    num_views = 2
    fallback_template = "User:<image>{question}<end_of_utterance>\nAssistant:"

    def __init__(self, *args, grid: int = 24, **kwargs):
        super().__init__(*args, **kwargs)
        self.grid = int(grid)

    def attention_modules(self) -> list[nn.Module]:
        return [layer.self_attn for layer in self.lmm.model.text_model.layers]

    def check_model(self) -> None:
        side = self._side()
        processor = self.processor
        if processor is None:
            return
        if processor.image_seq_len != side * side:
            raise ConfigError(
                f"the processor's image_seq_len {processor.image_seq_len} is not the model's {side * side} "
                "tokens per frame"
            )
        tile = processor.image_processor.max_image_size["longest_edge"]
        if tile != self._frame:
            raise ConfigError(
                f"the image processor's tiles are {tile} px, the vision tower takes {self._frame} px"
            )

    @property
    def _frame(self) -> int:
        """s, the side in pixels of a frame (tile or global image), the vision tower's input."""
        return int(self.lmm.config.vision_config.image_size)

    def _side(self) -> int:
        """g, the side of one frame's token grid: s / patch patches, folded by the pixel shuffle."""
        config = self.lmm.config
        patches, scale = self._frame // config.vision_config.patch_size, config.scale_factor
        if self._frame % config.vision_config.patch_size or patches % scale:
            raise ConfigError(
                f"Idefics3 frames of {self._frame} px, patch {config.vision_config.patch_size}, "
                f"scale_factor {scale} do not give an integer token grid"
            )
        return patches // scale

    @property
    def grid_size(self) -> tuple[int, int]:
        return (self.grid, self.grid)

    def image_transform(self) -> LMMInputs:
        return LMMInputs(Idefics3Transform(self._processor().image_processor))

    def _tile_grid(self, image: LMMImage) -> tuple[int, int]:
        pixels, frame = image["pixel_values"], self._frame
        if "tile_grid" not in image or pixels.dim() != 4 or tuple(pixels.shape[-2:]) != (frame, frame):
            raise ValueError(
                f"Idefics3 needs pixel_values (frames, 3, {frame}, {frame}) and tile_grid (2,) per image "
                f"({type(self).__name__}.image_transform)"
            )
        rows, cols = (int(v) for v in image["tile_grid"].reshape(2))
        frames = rows * cols + 1 if rows * cols else 1
        if pixels.shape[0] != frames:
            raise ValueError(
                f"{rows} x {cols} tiles make {frames} frames, got {pixels.shape[0]} in pixel_values"
            )
        return rows, cols

    def layout(self, image: LMMImage) -> ImageLayout:
        rows, cols = self._tile_grid(image)
        side = self._side()
        frame_cells = raster_cells(side, side)
        if rows * cols == 0:
            return RepeatedViewLayout(frame_cells, ((side, side), (side, side)))
        offsets = [torch.tensor([0, t // cols * side, t % cols * side]) for t in range(rows * cols)]
        cells = [frame_cells + offset for offset in offsets]
        shapes = ((rows * side, cols * side), (side, side))
        return ImageLayout(torch.cat([*cells, raster_cells(side, side, view=1)]), shapes)

    def image_text(self, layout: ImageLayout, image: LMMImage) -> str:
        rows, cols = self._tile_grid(image)
        # The processor's own expansion, from the rows / cols its image processor reported.
        return self._processor().replace_image_token({"rows": [[rows]], "cols": [[cols]]}, 0)

    def vision_inputs(self, images: Sequence[LMMImage]) -> dict[str, torch.Tensor]:
        # All-zero frames after a sample's own, as the image processor pads a batch.
        pixels = stack_padded([image["pixel_values"] for image in images])
        mask = stack_padded([image["pixel_attention_mask"] for image in images])
        device = self.lmm.device
        return {
            "pixel_values": pixels.to(device=device, dtype=self.lmm.dtype),
            "pixel_attention_mask": mask.to(device),
        }


class SmolVLMImageOnlyProcessor(without_video(SmolVLMProcessor)):
    """`SmolVLMProcessor` for images, buildable without `num2words` and without a video processor (which
    needs torchvision): the same tokens, image processing and expansion (`replace_image_token`)."""

    def __init__(
        self,
        image_processor,
        tokenizer,
        video_processor=None,
        image_seq_len: int = 169,
        chat_template: str | None = None,
        **kwargs,
    ):
        # SmolVLMProcessor.__init__ sets these, then raises without num2words; only videos need it.
        self.fake_image_token = getattr(tokenizer, "fake_image_token", "<fake_token_around_image>")
        self.image_token = getattr(tokenizer, "image_token", "<image>")
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.end_of_utterance_token = getattr(tokenizer, "end_of_utterance_token", "<end_of_utterance>")
        self.global_image_token = getattr(tokenizer, "global_image_token", "<global-img>")
        self.image_seq_len = image_seq_len
        self.video_token = getattr(tokenizer, "video_token", "<video>")
        ProcessorMixin.__init__(
            self, image_processor, tokenizer, video_processor, chat_template=chat_template, **kwargs
        )

    def apply_chat_template(self, conversation, chat_template=None, **kwargs):
        # SmolVLMProcessor's own adds video sampling defaults read from the video processor, absent here.
        return ProcessorMixin.apply_chat_template(self, conversation, chat_template, **kwargs)


@LMM_ADAPTERS.register_module()
class SmolVLMAdapter(Idefics3Adapter):
    """Frozen `SmolVLMForConditionalGeneration`: as Idefics3 (same frames, views and expansion)."""

    model_class = SmolVLMForConditionalGeneration
    fallback_template = "<|im_start|>User:<image>{question}<end_of_utterance>\nAssistant:"

    @classmethod
    def load_processor(cls, source: str, offline: bool) -> ProcessorMixin:
        """The checkpoint's `SmolVLMProcessor` where num2words and torchvision are present, else
        `SmolVLMImageOnlyProcessor` from the same files."""
        try:
            return load_processor(source, offline)
        except ImportError:
            pass
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=offline)
        return SmolVLMImageOnlyProcessor(
            image_processor=AutoImageProcessor.from_pretrained(source, local_files_only=offline),
            tokenizer=tokenizer,
            chat_template=getattr(tokenizer, "chat_template", None),
            **saved_processor_kwargs(source),
        )
