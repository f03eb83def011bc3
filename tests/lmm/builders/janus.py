"""Janus (a SigLIP-style tower of 32 px / patch 8 = 4 x 4 tokens, Llama decoder; the image-generation VQ
model at its smallest, never run by the adapter)."""

from __future__ import annotations

from transformers import JanusConfig, JanusForConditionalGeneration, JanusImageProcessorPil, JanusProcessor

from flmm.lmm.tiny import build_tokenizer
from tests.lmm.builders import CORPUS, TEXT, TinyFamily, seeded, text_config

# JanusProcessor reads the tokenizer's `image_token`, `boi_token` and `eoi_token`.
SPECIALS = {
    "image_token": "<image_placeholder>",
    "boi_token": "<begin_of_image>",
    "eoi_token": "<end_of_image>",
}
# Janus's chat format, one user turn with the image first; the tokenizer adds the BOS.
TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}<|User|>: {% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image_placeholder>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %}\n\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|Assistant|>:{% endif %}"
)
SIDE, PATCH = 32, 8


def _janus() -> TinyFamily:
    tokenizer = build_tokenizer(CORPUS, SPECIALS)
    text = text_config(tokenizer, "llama")
    vision = {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "mlp_ratio": 2.0,
        "image_size": SIDE,
        "patch_size": PATCH,
        # The aligner maps tower features to the decoder's embeddings.
        "projection_dim": TEXT["hidden_size"],
        "num_image_tokens": (SIDE // PATCH) ** 2,
    }
    # The VQ model's GroupNorms have 32 groups: 32 channels, one resolution, one block is the floor.
    vq = {
        "embed_dim": 8,
        "num_embeddings": 16,
        "latent_channels": 32,
        "base_channels": 32,
        "channel_multiplier": [1],
        "num_res_blocks": 1,
        "projection_dim": TEXT["hidden_size"],
        "image_token_embed_dim": TEXT["hidden_size"],
        "num_hidden_layers": 1,
    }
    config = JanusConfig(
        text_config=text,
        vision_config=vision,
        vq_config=vq,
        image_token_id=tokenizer.convert_tokens_to_ids(SPECIALS["image_token"]),
    )
    model = seeded(lambda: JanusForConditionalGeneration._from_config(config))
    image_processor = JanusImageProcessorPil(size={"height": SIDE, "width": SIDE})
    processor = JanusProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=TEMPLATE,
        # Exercise the processor's system prompt in front of every text, which the adapter must match.
        use_default_system_prompt=True,
        num_image_tokens=(SIDE // PATCH) ** 2,
    )
    # A square of the tower's size: no resize, no padding (the frame is the padded square).
    return TinyFamily("janus", model, processor, (SIDE, SIDE))


BUILDERS = {"janus": lambda _: _janus()}
