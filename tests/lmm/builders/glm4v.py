"""GLM-4.1V: its own torchvision-free image processor (14-px patches, 2 x 2 conv merge), partial rotary."""

from __future__ import annotations

from transformers import Glm4vConfig, Glm4vForConditionalGeneration, Glm4vImageProcessorPil, Glm4vProcessor

from flmm.lmm.loading import without_video
from flmm.lmm.tiny import build_tokenizer
from tests.lmm.builders import CORPUS, TEXT, TinyFamily, seeded, token_ids
from tests.lmm.builders.qwen2_vl import QWEN_VISION  # GLM-4.1V's tower is Qwen2-VL's kind

SPECIALS = {
    "image_token": "<|image|>",
    "video_token": "<|video|>",
    "image_start_token": "<|begin_of_image|>",
    "image_end_token": "<|end_of_image|>",
    # The processor looks the video markers up by these strings (to tell video frames from images).
    "video_start_token": "<|begin_of_video|>",
    "video_end_token": "<|end_of_video|>",
    "gmask_token": "[gMASK]",
    "sop_token": "<sop>",
    "user_token": "<|user|>",
    "assistant_token": "<|assistant|>",
}
# GLM-4.1V's chat format, one user turn with the image first (what the hub template renders for it).
TEMPLATE = (
    "[gMASK]<sop>{% for m in messages %}<|{{ m['role'] }}|>\n{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|begin_of_image|><|image|><|end_of_image|>"
    "{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
GLM_TOKENS = ("image_token", "video_token", "image_start_token", "image_end_token", "video_start_token",
              "video_end_token")  # fmt: skip
PATCH, MERGE = 14, 2


def _glm4v() -> TinyFamily:
    tokenizer = build_tokenizer(CORPUS, SPECIALS)
    # As GLM-4.1V, rotary on half of each head (8 of 16 dims); the M-RoPE sections sum to that half / 2.
    rope = {
        "rope_type": "default",
        "rope_theta": 1e4,
        "partial_rotary_factor": 0.5,
        "mrope_section": [1, 1, 2],
    }
    text = {**TEXT, "vocab_size": len(tokenizer), "rope_parameters": rope}
    vision = {
        **QWEN_VISION,
        "patch_size": PATCH,
        "spatial_merge_size": MERGE,
        "image_size": 8 * PATCH,  # an 8 x 8 learned position table, interpolated to the patch grid
    }
    config = Glm4vConfig(
        text_config=text,
        vision_config=vision,
        **token_ids(tokenizer, SPECIALS, GLM_TOKENS),
    )
    model = seeded(lambda: Glm4vForConditionalGeneration._from_config(config))
    cell = PATCH * MERGE
    # GLM's smart_resize counts a still image twice (two temporal patches) against these pixel bounds.
    image_processor = Glm4vImageProcessorPil(
        patch_size=PATCH,
        merge_size=MERGE,
        size={"shortest_edge": 2 * (2 * cell) ** 2, "longest_edge": 2 * (4 * cell) ** 2},
    )
    processor = without_video(Glm4vProcessor)(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=None, chat_template=TEMPLATE
    )
    # 2 x 3 tokens of 28 px (and 3 x 2 transposed): within the pixel bounds, kept as it is.
    return TinyFamily("glm4v", model, processor, (2 * cell, 3 * cell))


BUILDERS = {"glm4v": lambda _: _glm4v()}
