"""Gemma 3 (`Gemma3ForConditionalGeneration`): one square grid of soft tokens, a squashed image, windows.

The image processor resizes the whole image to s x s (896 at 4B/12B/27B) without keeping its aspect; SigLIP
cuts it into (s / 14)^2 patches, which the projector average-pools to `mm_tokens_per_image` = t x t soft
tokens (256 = 16 x 16), row-major. The maps are that t x t grid stretched over the whole image (no padding).

Tokens. The chat template writes `<start_of_image>` (the BOI, which is what `processor.image_token` is) and
the processor expands it to "\\n\\n<start_of_image>" + t*t x `<image_soft_token>` + "<end_of_image>\\n\\n";
only the soft tokens (`config.image_token_id`) receive image features, so they are what the layout and the
attention capture count, while the BOI stays the prompt's placeholder.

Extra input. `token_type_ids` (1 on the soft tokens) makes the tokens of one image attend to each other
bidirectionally; without it the mask is plain causal and the logits change silently, so it is always
passed. Phrase tokens are text, so their attention rows stay causal (and windowed on the sliding layers,
5 of every 6): the hooked capture's causal + window recompute is exact for them. Positions are 1-D.

Pan-and-scan (extra crops, each its own block of soft tokens; off by default) is refused: its crops would
need views whose number varies with the image's aspect, and a batch's samples must share the view count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from transformers import Gemma3ForConditionalGeneration

from flmm.data.transforms import LMMInputs, ProcessorTransform
from flmm.errors import ConfigError
from flmm.lmm.adapter import LMMAdapter, LMMImage
from flmm.lmm.layout import ImageLayout, raster_cells
from flmm.registry import LMM_ADAPTERS


@LMM_ADAPTERS.register_module()
class Gemma3Adapter(LMMAdapter):
    """Frozen `Gemma3ForConditionalGeneration`: per image `pixel_values (3, s, s)`; the head's grid is the
    model's own t x t soft-token grid (t = sqrt(mm_tokens_per_image), 16 at 4B)."""

    model_class = Gemma3ForConditionalGeneration
    # The hub template's rendering of one user turn (the tokenizer adds the BOS).
    fallback_template = "<start_of_turn>user\n<start_of_image>{question}<end_of_turn>\n<start_of_turn>model\n"

    def check_model(self) -> None:
        tokens = int(self.lmm.config.mm_tokens_per_image)
        if math.isqrt(tokens) ** 2 != tokens:
            raise ConfigError(f"mm_tokens_per_image must be a square (a t x t grid), got {tokens}")
        tokenizer = getattr(self.processor, "tokenizer", None)
        soft = getattr(tokenizer, "image_token_id", None)
        if soft is not None and int(soft) != int(self.lmm.config.image_token_id):
            # The expansion writes the tokenizer's soft token; the model fills `config.image_token_id`.
            raise ConfigError(
                f"the tokenizer's image (soft) token id {soft} is not the model's image_token_id "
                f"{self.lmm.config.image_token_id}"
            )

    @property
    def _side(self) -> int:
        return math.isqrt(int(self.lmm.config.mm_tokens_per_image))

    @property
    def grid_size(self) -> tuple[int, int]:
        return (self._side, self._side)

    def image_transform(self) -> LMMInputs:
        image_processor = self._processor().image_processor
        if getattr(image_processor, "do_pan_and_scan", None):
            raise ConfigError("Gemma 3 pan-and-scan crops are not supported; set do_pan_and_scan to false")
        # pixel_values (3, s, s): the batch dimension of the one image removed; num_crops (1,) stays.
        return LMMInputs(ProcessorTransform(image_processor, batched_keys=("pixel_values",)))

    def layout(self, image: LMMImage) -> ImageLayout:
        size = self.lmm.config.vision_config.image_size
        if tuple(image["pixel_values"].shape) != (3, size, size):
            raise ValueError(
                f"pixel_values must be (3, {size}, {size}), got {tuple(image['pixel_values'].shape)}"
            )
        if "num_crops" in image and int(torch.as_tensor(image["num_crops"]).sum()) > 0:
            raise ValueError("Gemma 3 pan-and-scan crops are not supported (num_crops > 0)")
        side = self._side
        return ImageLayout(raster_cells(side, side), ((side, side),))

    def image_text(self, layout: ImageLayout, image: LMMImage) -> str:
        """The processor's expansion of the BOI placeholder: blank lines, BOI, the soft tokens, EOI."""
        tokenizer = self._processor().tokenizer
        soft = tokenizer.image_token * layout.num_tokens
        return f"\n\n{tokenizer.boi_token}{soft}{tokenizer.eoi_token}\n\n"

    def vision_inputs(self, images: Sequence[LMMImage]) -> dict[str, torch.Tensor]:
        pixels = torch.stack([image["pixel_values"] for image in images])  # (B, 3, s, s)
        return {"pixel_values": pixels.to(device=self.lmm.device, dtype=self.lmm.dtype)}

    def extra_inputs(self, input_ids: torch.Tensor, images: Sequence[LMMImage]) -> dict[str, torch.Tensor]:
        """`token_type_ids (B, S)` long, 1 on the soft tokens: the bidirectional image blocks of the mask."""
        return {"token_type_ids": (input_ids == self.image_token_id).long()}
