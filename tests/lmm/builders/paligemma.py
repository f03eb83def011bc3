"""PaliGemma 1 (Gemma decoder) and PaliGemma 2 (Gemma 2 decoder: attention soft-capping, sliding windows).

SigLIP of 32 px / patch 8 = 4 x 4 = 16 image tokens; the image processor squashes any image to 32 x 32, so
every image size maps regions to cells. PaliGemma has no chat template: the adapter's fallback prompt
("<image>{question}\\n") is what its processor is given. The tokenizer keeps "\\n" as a token (real Gemma
tokenizers do; the tiny word-level one would drop it): it separates the prefix from the suffix.
PaliGemma's processor takes the text to ground as `suffix` (`TinyFamily.processor_inputs`).
"""

from __future__ import annotations

from transformers import (
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    PaliGemmaProcessor,
    SiglipImageProcessorPil,
)

from flmm.lmm.tiny import build_tokenizer
from tests.lmm.builders import CORPUS, SIGLIP, TEXT, TinyFamily, seeded, text_config

SIDE, PATCH = 32, 8
SPECIALS = {"image_token": "<image>", "newline_token": "\n"}


def _as_suffix(processor: PaliGemmaProcessor, images: list, prompt: str, text: str) -> dict:
    """PaliGemma's own encoding of `prompt` + `text`: the text as `suffix` (causal, token_type_ids 1), the
    prompt without the "\\n" that the processor adds itself; the EOS that closes a suffix and the training
    `labels` are dropped (a grounded text has no EOS)."""
    out = processor(images=images, text=[prompt.removesuffix("\n")], suffix=[text], return_tensors="pt")
    out.pop("labels")
    return {key: value if key == "pixel_values" else value[:, :-1] for key, value in out.items()}


def _paligemma(name: str, version: int) -> TinyFamily:
    tokenizer = build_tokenizer(CORPUS, SPECIALS)
    image_processor = SiglipImageProcessorPil(size={"height": SIDE, "width": SIDE})
    # PaliGemmaProcessor reads the token count from the image processor (256 / 1024 / 4096 on the hub).
    image_processor.image_seq_length = (SIDE // PATCH) ** 2
    # Built before the config: the processor adds its <locXXXX> / <segXXX> tokens to the tokenizer.
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)
    text = text_config(tokenizer, "gemma" if version == 1 else "gemma2", head_dim=16)
    if version == 2:
        # Gemma 2: soft-capping 50 as on the hub; layers 0 and 2 slide over 16 keys (kit sequences: 28+).
        text.update(
            query_pre_attn_scalar=16,
            attn_logit_softcapping=50.0,
            final_logit_softcapping=30.0,
            sliding_window=16,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        )
    vision = {**SIGLIP, "image_size": SIDE, "patch_size": PATCH, "vision_use_head": False}
    config = PaliGemmaConfig(
        text_config=text,
        vision_config=vision,
        image_token_index=tokenizer.image_token_id,
        projection_dim=TEXT["hidden_size"],
        hidden_size=TEXT["hidden_size"],
        vocab_size=len(tokenizer),
    )
    model = seeded(lambda: PaliGemmaForConditionalGeneration._from_config(config))
    return TinyFamily(name, model, processor, (40, 72), processor_inputs=_as_suffix)


BUILDERS = {
    "paligemma": lambda _: _paligemma("paligemma", 1),
    "paligemma2": lambda _: _paligemma("paligemma2", 2),
}
