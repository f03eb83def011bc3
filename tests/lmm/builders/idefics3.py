"""Idefics3 and SmolVLM: Llama decoder, SigLIP frames of 56 px (4 x 4 patches of 14, pixel shuffle 2 -> 2 x 2
tokens), images up to 112 px on the longest edge cut into 56-px tiles + the global image.

SmolVLM's processor is the family's `SmolVLMImageOnlyProcessor` (transformers' needs num2words and a video
processor, i.e. torchvision).
"""

from __future__ import annotations

from transformers import (
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessorPil,
    Idefics3Processor,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
    SmolVLMImageProcessorPil,
)

from flmm.lmm.families.idefics3 import SmolVLMImageOnlyProcessor
from flmm.lmm.tiny import build_tokenizer
from tests.lmm.builders import CORPUS, TinyFamily, seeded, text_config

# Idefics3Processor writes these strings itself; SmolVLMProcessor reads them from the tokenizer by these
# attribute names. The tokenizer must hold them as single tokens, the tile markers included.
SPECIALS = {
    "image_token": "<image>",
    "fake_image_token": "<fake_token_around_image>",
    "global_image_token": "<global-img>",
    "end_of_utterance_token": "<end_of_utterance>",
    **{f"row_{r}_col_{c}_token": f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)},
}
# The hub template's rendering of one user turn with the image first; the tokenizer adds the BOS.
TEMPLATE = (
    "{% for m in messages %}{{ m['role'] | capitalize }}{% if m['content'][0]['type'] == 'image' %}:"
    "{% else %}: {% endif %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
FRAME, PATCH, SCALE = 56, 14, 2
VISION = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
          "image_size": FRAME, "patch_size": PATCH}  # fmt: skip


def _family(name: str) -> TinyFamily:
    smolvlm = name == "smolvlm"
    tokenizer = build_tokenizer(CORPUS, SPECIALS)
    text = text_config(tokenizer, "llama")
    config = (SmolVLMConfig if smolvlm else Idefics3Config)(
        text_config=text,
        vision_config=VISION,
        image_token_id=tokenizer.convert_tokens_to_ids(SPECIALS["image_token"]),
        scale_factor=SCALE,
    )
    model_class = SmolVLMForConditionalGeneration if smolvlm else Idefics3ForConditionalGeneration
    model = seeded(lambda: model_class._from_config(config))
    image_processor = (SmolVLMImageProcessorPil if smolvlm else Idefics3ImageProcessorPil)(
        size={"longest_edge": 2 * FRAME}, max_image_size={"longest_edge": FRAME}
    )
    side = FRAME // PATCH // SCALE
    processor = (SmolVLMImageOnlyProcessor if smolvlm else Idefics3Processor)(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=side * side,
        chat_template=TEMPLATE,
    )
    # 56 x 112: exactly 1 x 2 tiles (2 x 1 transposed), no resize, + the global image.
    return TinyFamily(name, model, processor, (FRAME, 2 * FRAME))


BUILDERS = {name: lambda _, name=name: _family(name) for name in ("idefics3", "smolvlm")}
