"""Qwen3-VL (`Qwen3VLForConditionalGeneration`): Qwen2.5-VL's layout at 32 px per LLM token.

The checkpoint ships Qwen2-VL's image processor configured with 16-px patches: it `smart_resize`s the whole
image to multiples of 32 px (patch 16 x merge 2; no crop, no padding), `image_grid_thw = (1, h, w)` in
patches, and the merger fuses 2 x 2 patches into one LLM token, so an image has (h / 2) x (w / 2) tokens,
row-major. What differs from Qwen2.5-VL inside the model does not change the boundary: the decoder's
q/k norm and interleaved M-RoPE happen before the attention function (hooked capture sees the final q/k),
and deepstack adds intermediate vision features to the hidden states at the image positions after the
first decoder layers (the residual stream, not which token fills which cell). M-RoPE positions are the
model's own (from `image_grid_thw` and `mm_token_type_ids`, which it requires), as for Qwen2-VL.

Qwen3-VL-MoE (`Qwen3VLMoeForConditionalGeneration`, e.g. Qwen3-VL-30B-A3B) is the same model with its
decoder MLPs replaced by routed experts: the attention, the vision tower, the processor (`Qwen3VLProcessor`)
and the positions are Qwen3-VL's, and the router picks experts from the residual stream, after attention,
so nothing at the boundary differs but the class.
"""

from __future__ import annotations

from transformers import Qwen3VLForConditionalGeneration, Qwen3VLMoeForConditionalGeneration

from flmm.lmm.families.qwen2_vl import Qwen2VLAdapter
from flmm.registry import LMM_ADAPTERS


@LMM_ADAPTERS.register_module()
class Qwen3VLAdapter(Qwen2VLAdapter):
    """Frozen `Qwen3VLForConditionalGeneration`: per image `pixel_values (n_patches, 3 * 2 * 16 * 16)` and
    `image_grid_thw (1, 3)`; Qwen2-VL's layout, inputs and `grid x grid` head grid."""

    model_class = Qwen3VLForConditionalGeneration


@LMM_ADAPTERS.register_module()
class Qwen3VLMoeAdapter(Qwen3VLAdapter):
    """Frozen `Qwen3VLMoeForConditionalGeneration`: Qwen3-VL's inputs, layout and head grid."""

    model_class = Qwen3VLMoeForConditionalGeneration
