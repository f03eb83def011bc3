"""InternVL (-hf format): Qwen2 decoder, 56-px tiles of 2 x 2 tokens, up to 4 tiles + a thumbnail."""

from __future__ import annotations

from transformers import (
    GotOcr2ImageProcessorPil,
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLProcessor,
)

from flmm.lmm.loading import without_video
from flmm.lmm.tiny import build_tokenizer
from tests.lmm.builders import CORPUS, TEXT, TinyFamily, seeded

# By the tokenizer attributes InternVLProcessor reads; the image token is the context token.
SPECIALS = {
    "image_token": "<IMG_CONTEXT>",
    "context_image_token": "<IMG_CONTEXT>",
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "video_token": "<video>",
    "im_start_token": "<|im_start|>",
    "im_end_token": "<|im_end|>",
}
# What the -hf checkpoints' chat template renders for one user turn with the image first (no system turn).
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<IMG_CONTEXT>\n{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# 56-px tiles: 56 / 14 = 4 x 4 patches, pixel shuffle 0.5 -> 2 x 2 = 4 tokens per tile (image_seq_length).
VISION = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
          "image_size": 56, "patch_size": 14}  # fmt: skip


def _internvl() -> TinyFamily:
    tokenizer = build_tokenizer(CORPUS, SPECIALS)
    config = InternVLConfig(
        text_config={**TEXT, "model_type": "qwen2", "vocab_size": len(tokenizer)},
        vision_config=VISION,
        image_token_id=tokenizer.convert_tokens_to_ids(SPECIALS["context_image_token"]),
        downsample_ratio=0.5,
    )
    model = seeded(lambda: InternVLForConditionalGeneration._from_config(config))
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": 56, "width": 56}, crop_to_patches=True, max_patches=4
    )
    processor = without_video(InternVLProcessor)(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=None,
        image_seq_length=4,
        chat_template=TEMPLATE,
    )
    # 56 x 112: exactly 1 x 2 tiles (and 2 x 1 for the kit's transposed image), no resize, + the thumbnail.
    return TinyFamily("internvl", model, processor, (56, 112))


BUILDERS = {"internvl": lambda _: _internvl()}
