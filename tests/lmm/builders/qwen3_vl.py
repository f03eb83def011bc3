"""Qwen3-VL: Qwen2-VL's image processor at 16-px patches, q/k-normed decoder, deepstack on both ViT layers;
Qwen3-VL-MoE: the same with routed experts (4, 2 a token) in place of the decoder's MLPs."""

from __future__ import annotations

from transformers import (
    Qwen2VLImageProcessorPil,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMoeConfig,
    Qwen3VLMoeForConditionalGeneration,
    Qwen3VLProcessor,
)

from flmm.lmm.loading import without_video
from flmm.lmm.tiny import build_tokenizer
from tests.lmm.builders import CORPUS, TEXT, TinyFamily, seeded, token_ids
from tests.lmm.builders.qwen2_vl import (  # Qwen's tokens and chat format
    QWEN_TOKENS,
    QWEN_VISION,
    SPECIALS,
    TEMPLATE,
)

PATCH, MERGE = 16, 2


def _qwen3_vl(name: str, config_class, model_class, **text_sizes) -> TinyFamily:
    tokenizer = build_tokenizer(CORPUS, SPECIALS)
    # Qwen3-VL's M-RoPE is always interleaved; the sections sum to head_dim / 2 (its default head_dim is 128).
    rope = {"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3], "mrope_interleaved": True}
    text = {**TEXT, "vocab_size": len(tokenizer), "head_dim": 16, "rope_parameters": rope, **text_sizes}
    vision = {
        **QWEN_VISION,
        "patch_size": PATCH,
        "spatial_merge_size": MERGE,
        "num_position_embeddings": 64,  # an 8 x 8 learned table, interpolated to the patch grid
        "deepstack_visual_indexes": [0, 1],  # features of both ViT layers added after decoder layers 0, 1
    }
    config = config_class(
        text_config=text, vision_config=vision, **token_ids(tokenizer, SPECIALS, QWEN_TOKENS)
    )
    model = seeded(lambda: model_class._from_config(config))
    cell = PATCH * MERGE
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=PATCH, merge_size=MERGE, min_pixels=(2 * cell) ** 2, max_pixels=(4 * cell) ** 2
    )
    processor = without_video(Qwen3VLProcessor)(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=None, chat_template=TEMPLATE
    )
    # 2 x 3 tokens of 32 px (and 3 x 2 transposed): within min/max pixels, kept as it is.
    return TinyFamily(name, model, processor, (2 * cell, 3 * cell))


MOE = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32}
BUILDERS = {
    "qwen3_vl": lambda _: _qwen3_vl("qwen3_vl", Qwen3VLConfig, Qwen3VLForConditionalGeneration),
    "qwen3_vl_moe": lambda _: _qwen3_vl(
        "qwen3_vl_moe", Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration, **MOE
    ),
}
