"""Gemma 3 (`Gemma3ForConditionalGeneration`), with sliding-window layers shorter than the kit's sequences.

SigLIP of 64 px / patch 8 = 8 x 8 patches, average-pooled to 4 x 4 = 16 soft tokens per image
(`mm_tokens_per_image`); the image processor squashes any image to 64 x 64, so every image size maps
regions to cells.
"""

from __future__ import annotations

import torch
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessorPil,
    Gemma3Processor,
)

from flmm.lmm.tiny import build_tokenizer
from tests.lmm.builders import CORPUS, SIGLIP, TinyFamily, seeded, text_config, token_ids

# By the attribute names Gemma3Processor reads (boi_token, eoi_token, image_token = the soft token); the turn
# markers only need to stay single tokens.
SPECIALS = {
    "image_token": "<image_soft_token>",
    "boi_token": "<start_of_image>",
    "eoi_token": "<end_of_image>",
    "start_of_turn_token": "<start_of_turn>",
    "end_of_turn_token": "<end_of_turn>",
}
# What the hub template of google/gemma-3-4b-it renders for one user turn (image, then text), less its
# leading `{{ bos_token }}`: the kit compares with `processor(text=prompt)`, whose tokenizer adds the BOS
# itself (a prompt that does start with it gets none added by `encode_prompts`, so both give one BOS).
TEMPLATE = (
    "{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<start_of_image>"
    "{% else %}{{ c['text'] | trim }}{% endif %}{% endfor %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
SIDE, PATCH, TOKENS = 64, 8, 16


@torch.no_grad()
def _with_projection(model: Gemma3ForConditionalGeneration) -> Gemma3ForConditionalGeneration:
    """Gemma 3 zero-initialises its projector `(D_vision, D_text)`, which would give every soft token the
    same (zero) features: random weights (std 0.2, as the decoder's) make the image reach the decoder."""
    model.model.multi_modal_projector.mm_input_projection_weight.normal_(std=0.2)
    return model


def _gemma3() -> TinyFamily:
    tokenizer = build_tokenizer([*CORPUS, "model"], SPECIALS)  # "model": Gemma's assistant role
    # Layers 0 and 1 see 16 keys back: shorter than every kit sequence (39+ tokens), long enough that the
    # first phrase tokens still reach the last image tokens through them.
    text = text_config(
        tokenizer,
        "gemma3_text",
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=16,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
    )
    vision = {**SIGLIP, "image_size": SIDE, "patch_size": PATCH}
    config = Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=TOKENS,
        **token_ids(tokenizer, SPECIALS, ("image_token", "boi_token", "eoi_token"), suffix="_index"),
    )
    model = seeded(lambda: _with_projection(Gemma3ForConditionalGeneration._from_config(config)))
    image_processor = Gemma3ImageProcessorPil(size={"height": SIDE, "width": SIDE})
    processor = Gemma3Processor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=TEMPLATE, image_seq_length=TOKENS
    )
    return TinyFamily("gemma3", model, processor, (40, 72))


BUILDERS = {"gemma3": lambda _: _gemma3()}
