"""Aya Vision: SigLIP, 56-px tiles of 4 x 4 patches pixel-shuffled to 2 x 2 tokens, up to 4 tiles + a
thumbnail, a Cohere 2 decoder with sliding-window (RoPE) and full (no RoPE) layers."""

from __future__ import annotations

from transformers import (
    AyaVisionConfig,
    AyaVisionForConditionalGeneration,
    AyaVisionProcessor,
    GotOcr2ImageProcessorPil,
)

from flmm.lmm.tiny import build_tokenizer
from tests.lmm.builders import CORPUS, SIGLIP, TinyFamily, seeded, text_config

# AyaVisionProcessor takes its markers as arguments (these are its defaults); they and Cohere's turn markers
# only need to be single tokens. `<image>` is the template's placeholder, `<|IMG_PATCH|>` the image token.
SPECIALS = {
    "image_token": "<image>",
    "img_patch_token": "<|IMG_PATCH|>",
    "start_of_img_token": "<|START_OF_IMG|>",
    "end_of_img_token": "<|END_OF_IMG|>",
    "img_line_break_token": "<|IMG_LINE_BREAK|>",
    "start_of_turn_token": "<|START_OF_TURN_TOKEN|>",
    "end_of_turn_token": "<|END_OF_TURN_TOKEN|>",
    "user_token": "<|USER_TOKEN|>",
    "chatbot_token": "<|CHATBOT_TOKEN|>",
}
# The tile markers are plain text the processor writes (`TILE_1`, ..., `TILE_GLOBAL`), words here.
TILE_WORDS = "tile_1 tile_2 tile_3 tile_4 tile_global"
# One user turn with the image first in Cohere's turn markers (modelled on the hub template, not copied from
# it: no system preamble, no BOS, which the tokenizer adds as for the processor's own call).
TEMPLATE = (
    "{% for m in messages %}<|START_OF_TURN_TOKEN|>"
    "{{ '<|USER_TOKEN|>' if m['role'] == 'user' else '<|CHATBOT_TOKEN|>' }}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
    "<|END_OF_TURN_TOKEN|>{% endfor %}"
    "{% if add_generation_prompt %}<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>{% endif %}"
)
SIDE, PATCH, FACTOR = 56, 14, 2  # 4 x 4 patches a tile -> 2 x 2 tokens


def _aya_vision() -> TinyFamily:
    tokenizer = build_tokenizer([*CORPUS, TILE_WORDS], SPECIALS)
    # Layers 0 and 1 (RoPE) see 16 keys back, shorter than the kit's sequences; layer 2 is Cohere 2's full
    # attention layer without RoPE.
    text = text_config(
        tokenizer,
        "cohere2",
        sliding_window=16,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
    )
    vision = {**SIGLIP, "model_type": "siglip_vision_model", "image_size": SIDE, "patch_size": PATCH,
              "vision_use_head": False}  # fmt: skip
    config = AyaVisionConfig(
        text_config=text,
        vision_config=vision,
        downsample_factor=FACTOR,
        image_token_index=tokenizer.convert_tokens_to_ids(SPECIALS["img_patch_token"]),
    )
    model = seeded(lambda: AyaVisionForConditionalGeneration._from_config(config))
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": SIDE, "width": SIDE}, crop_to_patches=True, max_patches=4
    )
    processor = AyaVisionProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH,
        img_size=SIDE,
        downsample_factor=FACTOR,
        chat_template=TEMPLATE,
    )
    # 56 x 112: exactly 1 x 2 tiles (and 2 x 1 for the kit's transposed image), no resize, + the thumbnail.
    return TinyFamily("aya_vision", model, processor, (56, 112))


BUILDERS = {"aya_vision": lambda _: _aya_vision()}
