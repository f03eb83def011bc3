"""LLaVA-1.5 (`LlavaForConditionalGeneration`): one square grid, 336 / 14 = 24 x 24 = 576 tokens at 7B.

The image path is the reference's pad-to-square mode (longest side to the tower's size, centred padding in
the CLIP mean colour), whatever image processor the checkpoint ships: llava-hf checkpoints ship a
CLIP-style one (shortest edge 336, centre crop), which on a non-square image would show the LMM a crop
while the mask is placed as if padded. The grid covers the padded square, so masks come back through the
pad meta.
"""

from __future__ import annotations

from transformers import LlavaForConditionalGeneration

from flmm.data.transforms import LlavaPadTransform, LMMInputs
from flmm.errors import ConfigError
from flmm.lmm.adapter import LMMAdapter
from flmm.registry import LMM_ADAPTERS


@LMM_ADAPTERS.register_module()
class LlavaAdapter(LMMAdapter):
    """Frozen `LlavaForConditionalGeneration`; `pixel_values (3, s, s)` per image (s: the tower's input)."""

    model_class = LlavaForConditionalGeneration

    def check_model(self) -> None:
        strategy = self.lmm.config.vision_feature_select_strategy
        if strategy != "default":
            raise ConfigError(
                "vision_feature_select_strategy must be 'default' (CLS dropped, one token per patch), "
                f"got {strategy!r}"
            )

    def image_transform(self) -> LMMInputs:
        image_processor = self._processor().image_processor
        size = self.lmm.config.vision_config.image_size
        return LMMInputs(LlavaPadTransform(size, image_processor.image_mean, image_processor.image_std))
