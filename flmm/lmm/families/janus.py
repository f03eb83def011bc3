"""Janus / Janus-Pro in transformers' own format (the `deepseek-community/Janus-*` checkpoints).

`JanusForConditionalGeneration`, understanding path only (the VQ model, generation embeddings and head
serve image generation and are never run here): the image processor is DeepSeek-VL's geometry, the longest
side resized to 384 (aspect kept, sides rounded, at least `min_size`) and padded to a centred square in the
mean colour, `pixel_values (3, 384, 384)`; the SigLIP-style tower keeps every patch (no CLS) and the aligner
is a per-token MLP, so the image is 24 x 24 = 576 tokens, row-major over the padded square. The decoder is
a Llama at `model.language_model` (the boundary's default attention modules).

What differs from DeepSeek-VL: the processor wraps the repeated `<image_placeholder>` in `<begin_of_image>`
... `<end_of_image>`, may prepend a default system prompt to every text, and the chat format is
`<|User|>: ... <|Assistant|>:`.
"""

from __future__ import annotations

from transformers import JanusForConditionalGeneration
from transformers.models.janus.processing_janus import DEFAULT_SYSTEM_PROMPT

from flmm.lmm.adapter import LMMImage
from flmm.lmm.families.deepseek_vl import DeepseekVLAdapter
from flmm.lmm.layout import ImageLayout
from flmm.registry import LMM_ADAPTERS


@LMM_ADAPTERS.register_module()
class JanusAdapter(DeepseekVLAdapter):
    """Frozen `JanusForConditionalGeneration`; `pixel_values (3, s, s)` per image (the padded square at the
    tower's input side s), one (s / patch)^2 grid over it, framed by begin/end-of-image tokens."""

    model_class = JanusForConditionalGeneration
    fallback_template = "<|User|>: <image_placeholder>\n{question}\n\n<|Assistant|>:"

    def image_text(self, layout: ImageLayout, image: LMMImage) -> str:
        """`<begin_of_image>` + one placeholder per image token + `<end_of_image>`, as the processor's
        `replace_image_token` expands it (the markers are text tokens, not image tokens)."""
        processor = self._processor()
        return processor.image_start_token + self.image_token * layout.num_tokens + processor.image_end_token

    def expand_prompt(self, prompt: str, image: LMMImage) -> str:
        """As the boundary's, with the default system prompt in front when the processor adds it to every
        text (`use_default_system_prompt`), so the tokens are the processor's own."""
        expanded = super().expand_prompt(prompt, image)
        if getattr(self._processor(), "use_default_system_prompt", False):
            return DEFAULT_SYSTEM_PROMPT + expanded
        return expanded
