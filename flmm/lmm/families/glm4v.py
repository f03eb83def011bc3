"""GLM-4.1V (`Glm4vForConditionalGeneration`): Qwen2-VL's native-resolution layout, GLM's prompt.

The image processor (`Glm4vImageProcessor`, its own `smart_resize`: multiples of 28 px, the pixel budget
counted over the two temporal copies of a still image) resizes the whole image (no crop, no padding) and
cuts it into 14-px patches in Qwen2-VL's order; `image_grid_thw = (1, h, w)` in patches. The vision tower
fuses each 2 x 2 block of patches with a stride-2 convolution into one LLM token, so an image has
(h / 2) x (w / 2) tokens, row-major, each `<|image|>` (the prompt's `<|begin_of_image|>` /
`<|end_of_image|>` around them are ordinary text). The decoder's M-RoPE positions are the model's own,
from `image_grid_thw` and `mm_token_type_ids` (1 on image tokens; 2 would mark video frames, which reuse
`<|image|>`), which it requires; partial rotary and GLM's extra post-attention norms happen outside the
attention function, so hooked capture sees the final q/k.
"""

from __future__ import annotations

from transformers import Glm4vForConditionalGeneration

from flmm.lmm.families.qwen2_vl import Qwen2VLAdapter
from flmm.registry import LMM_ADAPTERS


@LMM_ADAPTERS.register_module()
class Glm4vAdapter(Qwen2VLAdapter):
    """Frozen `Glm4vForConditionalGeneration`: per image `pixel_values (n_patches, 3 * 2 * 14 * 14)` and
    `image_grid_thw (1, 3)`; Qwen2-VL's layout, inputs and `grid x grid` head grid."""

    model_class = Glm4vForConditionalGeneration
    # GLM-4.1V's chat format for one user turn with the image first (used only without a chat template).
    fallback_template = (
        "[gMASK]<sop><|user|>\n<|begin_of_image|><|image|><|end_of_image|>{question}<|assistant|>\n"
    )
