"""Mistral 3 (Pixtral vision, Mistral decoder), its processor saved and loaded back as a checkpoint's is.

transformers' `PixtralProcessor` needs torchvision: the processor is the family's `PixtralPilProcessor` on
`PixtralImageProcessorPil`, configured like the hub's (the tower's patch in the image processor, the merge
in the processor, `spatial_merge_size=2`).
"""

from __future__ import annotations

from pathlib import Path

from transformers import Mistral3Config, Mistral3ForConditionalGeneration, PixtralImageProcessorPil

from flmm.lmm.families.mistral3 import PixtralPilProcessor
from flmm.lmm.tiny import build_tokenizer
from tests.lmm.builders import CORPUS, TinyFamily, seeded, text_config

SPECIALS = {
    "image_token": "[IMG]",
    "image_break_token": "[IMG_BREAK]",
    "image_end_token": "[IMG_END]",
    "inst_token": "[INST]",
    "inst_end_token": "[/INST]",
}
# Mistral's instruct format, one user turn with the image first; the tokenizer adds the BOS.
TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}[INST]{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}[IMG]{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}[/INST]{% endif %}{% endfor %}"
)
PATCH, MERGE = 14, 2


def _mistral3(folder: Path) -> TinyFamily:
    tokenizer = build_tokenizer(CORPUS, SPECIALS)
    text = text_config(tokenizer, "mistral", head_dim=16, sliding_window=None)
    vision = {
        "model_type": "pixtral",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "head_dim": 16,
        "patch_size": PATCH,
        "image_size": 8 * PATCH,
    }
    config = Mistral3Config(
        text_config=text,
        vision_config=vision,
        image_token_index=tokenizer.convert_tokens_to_ids(SPECIALS["image_token"]),
        spatial_merge_size=MERGE,
        vision_feature_layer=-1,
    )
    model = seeded(lambda: Mistral3ForConditionalGeneration._from_config(config))
    cell = PATCH * MERGE
    image_processor = PixtralImageProcessorPil(
        patch_size={"height": PATCH, "width": PATCH}, size={"longest_edge": 4 * cell}
    )
    built = PixtralPilProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH,
        spatial_merge_size=MERGE,
        chat_template=TEMPLATE,
    )
    built.save_pretrained(folder)
    processor = PixtralPilProcessor.from_pretrained(folder)
    # 2 x 3 cells of 28 px (and 3 x 2 transposed): inside longest_edge, multiples of the cell, kept as is.
    return TinyFamily("mistral3", model, processor, (2 * cell, 3 * cell))


BUILDERS = {"mistral3": _mistral3}
