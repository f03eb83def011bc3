"""Qwen2-VL (with sliding-window layers shorter than the kit's sequences) and Qwen2.5-VL."""

from __future__ import annotations

from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    Qwen2VLProcessor,
)

from flmm.lmm.loading import without_video
from flmm.lmm.tiny import build_tokenizer
from tests.lmm.builders import CORPUS, TEXT, TinyFamily, seeded, token_ids

SPECIALS = {
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "vision_start_token": "<|vision_start|>",
    "vision_end_token": "<|vision_end|>",
    "im_start_token": "<|im_start|>",
    "im_end_token": "<|im_end|>",
}
# Qwen's chat format, one user turn with the image first (what the hub templates render for it).
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# Qwen-style vision tower at toy size (patch / merge sizes are each family's), its output the decoder's width.
QWEN_VISION = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64}
QWEN_TOKENS = ("image_token", "video_token", "vision_start_token", "vision_end_token")


def _qwen(name: str, config_class, model_class, processor_class, sliding: bool) -> TinyFamily:
    tokenizer = build_tokenizer(CORPUS, SPECIALS)
    rope = {"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3]}  # sums to head_dim / 2
    text = {**TEXT, "vocab_size": len(tokenizer), "rope_parameters": rope}
    if sliding:  # layers 1 and 2 see 12 keys back: shorter than every kit sequence
        text.update(use_sliding_window=True, sliding_window=12, max_window_layers=1)
    if model_class is Qwen2VLForConditionalGeneration:  # Qwen2-VL names its tower's sizes otherwise
        vision = {"depth": 2, "num_heads": 2, "embed_dim": 32, "hidden_size": 64, "mlp_ratio": 2}
    else:
        vision = {**QWEN_VISION, "fullatt_block_indexes": [1]}
    vision.update(patch_size=14, spatial_merge_size=2)
    config = config_class(
        text_config=text, vision_config=vision, **token_ids(tokenizer, SPECIALS, QWEN_TOKENS)
    )
    model = seeded(lambda: model_class._from_config(config))
    image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112)
    processor = without_video(processor_class)(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=None, chat_template=TEMPLATE
    )
    return TinyFamily(name, model, processor, (56, 84))


BUILDERS = {
    "qwen2_vl": lambda _: _qwen(
        "qwen2_vl", Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor, True
    ),
    "qwen2_5_vl": lambda _: _qwen(
        "qwen2_5_vl", Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor, False
    ),
}
