"""DeepSeek-VL (SigLIP of 32 px / patch 8 = 4 x 4 tokens, Llama decoder) and its hybrid (+ a SAM tower of
64 px / patch 8, strided to the same 4 x 4 grid)."""

from __future__ import annotations

from transformers import (
    DeepseekVLConfig,
    DeepseekVLForConditionalGeneration,
    DeepseekVLHybridConfig,
    DeepseekVLHybridForConditionalGeneration,
    DeepseekVLHybridImageProcessorPil,
    DeepseekVLHybridProcessor,
    DeepseekVLImageProcessorPil,
    DeepseekVLProcessor,
)

from flmm.lmm.tiny import build_tokenizer
from tests.lmm.builders import CORPUS, TinyFamily, seeded, text_config

# DeepseekVLProcessor reads the tokenizer's `image_token`.
SPECIALS = {"image_token": "<image_placeholder>"}
# DeepSeek-VL's chat format, one user turn with the image first; the tokenizer adds the BOS.
TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}User: {% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image_placeholder>{% else %}{{ c['text'] }}{% endif %}{% endfor %}\n\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)
SIDE, PATCH = 32, 8
VISION = {
    "model_type": "siglip_vision_model",
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "image_size": SIDE,
    "patch_size": PATCH,
}
# SAM at twice the side, 8 x 8 patches in windows of 4, one global layer (whose states feed the neck).
HIGH_RES = {
    "model_type": "sam_vision_model",
    "hidden_size": 32,
    "output_channels": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "mlp_dim": 64,
    "image_size": 2 * SIDE,
    "patch_size": PATCH,
    "window_size": 4,
    "global_attn_indexes": [1],
}


def _text(tokenizer) -> dict:
    return text_config(tokenizer, "llama")


def _deepseek_vl() -> TinyFamily:
    tokenizer = build_tokenizer(CORPUS, SPECIALS)
    config = DeepseekVLConfig(
        text_config=_text(tokenizer),
        vision_config=VISION,
        image_token_id=tokenizer.convert_tokens_to_ids(SPECIALS["image_token"]),
    )
    model = seeded(lambda: DeepseekVLForConditionalGeneration._from_config(config))
    image_processor = DeepseekVLImageProcessorPil(size={"height": SIDE, "width": SIDE})
    processor = DeepseekVLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=TEMPLATE,
        num_image_tokens=(SIDE // PATCH) ** 2,
    )
    # A square of the tower's size: no resize, no padding (the frame is the padded square).
    return TinyFamily("deepseek_vl", model, processor, (SIDE, SIDE))


def _deepseek_vl_hybrid() -> TinyFamily:
    tokenizer = build_tokenizer(CORPUS, SPECIALS)
    config = DeepseekVLHybridConfig(
        text_config=_text(tokenizer),
        vision_config=VISION,
        high_res_vision_config=HIGH_RES,
        image_token_id=tokenizer.convert_tokens_to_ids(SPECIALS["image_token"]),
    )
    model = seeded(lambda: DeepseekVLHybridForConditionalGeneration._from_config(config))
    image_processor = DeepseekVLHybridImageProcessorPil(
        size={"height": SIDE, "width": SIDE}, high_res_size={"height": 2 * SIDE, "width": 2 * SIDE}
    )
    processor = DeepseekVLHybridProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=TEMPLATE,
        num_image_tokens=(SIDE // PATCH) ** 2,
    )
    # The high-res tower's size: kept as is there, halved for the low-res tower; no padding.
    return TinyFamily("deepseek_vl_hybrid", model, processor, (2 * SIDE, 2 * SIDE))


BUILDERS = {"deepseek_vl": lambda _: _deepseek_vl(), "deepseek_vl_hybrid": lambda _: _deepseek_vl_hybrid()}
