"""LLaVA-OneVision: Qwen2 decoder, 28-px SigLIP (2 x 2 base grid), any-res up to 4 x 4 tiles."""

from __future__ import annotations

from transformers import (
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessorPil,
    LlavaOnevisionProcessor,
)

from flmm.lmm.loading import without_video
from flmm.lmm.tiny import build_tokenizer
from tests.lmm.builders import CORPUS, TEXT, TinyFamily, seeded

SPECIALS = {
    "image_token": "<image>",
    "video_token": "<video>",
    "im_start_token": "<|im_start|>",
    "im_end_token": "<|im_end|>",
}
# What llava-hf's OneVision chat template renders for one user turn: images first, then "\n" + text.
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }} "
    "{% for c in m['content'] | selectattr('type', 'equalto', 'image') %}<image>{% endfor %}"
    "{% for c in m['content'] | selectattr('type', 'equalto', 'text') %}{{ '\n' + c['text'] }}{% endfor %}"
    "<|im_end|>{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TILE = 28
# Every arrangement of 1..4 tiles per side, like the hub's 384..2304 (1..6 tiles per side).
PINPOINTS = [[TILE * rows, TILE * cols] for rows in range(1, 5) for cols in range(1, 5)]

# SigLIP without CLS or pooling head: 28 / 14 = a 2 x 2 base grid (num_image_tokens 4).
VISION = {"model_type": "siglip_vision_model", "hidden_size": 32, "num_hidden_layers": 2,
          "num_attention_heads": 2, "intermediate_size": 64, "image_size": TILE, "patch_size": 14,
          "vision_use_head": False}  # fmt: skip


def _llava_onevision() -> TinyFamily:
    tokenizer = build_tokenizer(CORPUS, SPECIALS)
    config = LlavaOnevisionConfig(
        text_config={**TEXT, "model_type": "qwen2", "vocab_size": len(tokenizer)},
        vision_config=VISION,
        image_grid_pinpoints=PINPOINTS,
        image_token_index=tokenizer.convert_tokens_to_ids(SPECIALS["image_token"]),
        video_token_index=tokenizer.convert_tokens_to_ids(SPECIALS["video_token"]),
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
    )
    model = seeded(lambda: LlavaOnevisionForConditionalGeneration._from_config(config))
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": TILE, "width": TILE}, image_grid_pinpoints=PINPOINTS
    )
    processor = without_video(LlavaOnevisionProcessor)(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=None,
        num_image_tokens=4,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
        chat_template=TEMPLATE,
    )
    # 112 x 112: exactly 4 x 4 tiles (no resize, no padding); the 8 x 8 grid exceeds 9 base grids (2 x 2)
    # by more than 1.1^2, so the model shrinks it to 6 x 6: the kit covers the bilinear shrink. Square, so
    # the kit's two images have equal token counts (a non-square one, e.g. 84 x 112 -> 5 x 6 vs 6 x 5, needs
    # the token_attention zero-fill past a sample's own image tokens that the shared forward lacks yet).
    return TinyFamily("llava_onevision", model, processor, (112, 112))


BUILDERS = {"llava_onevision": lambda _: _llava_onevision()}
