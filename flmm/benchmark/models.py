"""Models of the real architectures with random weights, and synthetic batches of a chosen length.

Presets: `toy` (the embedded default's LLaVA), `llava7b` (llava-hf/llava-1.5-7b-hf: CLIP ViT-L/14 at 336 px
and Vicuna-7B, 32 layers x 32 heads of width 128) and `llava7b-slice` (the 7B's width with a few decoder
layers, what a CPU can run); the same presets of Qwen2-VL (M-RoPE, native resolution) for the capture
suite: Qwen2-VL-7B's sizes, or a toy one. Weights are random (no download); the tokenizer is word-level,
one token per word, so a batch's sequence length is exactly what is asked.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from transformers import Qwen2VLConfig, Qwen2VLImageProcessorPil, Qwen2VLProcessor

from flmm.lmm import LlavaAdapter
from flmm.lmm.families.qwen2_vl import Qwen2VLAdapter
from flmm.lmm.loading import without_video
from flmm.lmm.tiny import build_tokenizer, llava_parts

TOY = {
    "vision": {"image_size": 64, "patch_size": 8, "hidden_size": 128, "intermediate_size": 256,
               "num_hidden_layers": 2, "num_attention_heads": 4},
    "text": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 4,
             "num_attention_heads": 8, "num_key_value_heads": 8},
}  # fmt: skip
LLAVA7B = {
    "vision": {"image_size": 336, "patch_size": 14, "hidden_size": 1024, "intermediate_size": 4096,
               "num_hidden_layers": 24, "num_attention_heads": 16, "projection_dim": 768},
    "text": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
             "num_attention_heads": 32, "num_key_value_heads": 32, "max_position_embeddings": 8192,
             "vocab_size": 32064, "rms_norm_eps": 1e-5},
}  # fmt: skip
# Qwen/Qwen2-VL-7B-Instruct: a 32-block ViT of width 1280 (patch 14, 2 x 2 merge) + a 28-layer decoder of
# width 3584 with 28 query and 4 key-value heads and M-RoPE (sections 16, 24, 24).
QWEN2VL7B = {
    "vision": {
        "depth": 32,
        "embed_dim": 1280,
        "hidden_size": 3584,
        "num_heads": 16,
        "mlp_ratio": 4,
        "patch_size": 14,
        "spatial_merge_size": 2,
    },
    "text": {
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "vocab_size": 152064,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
    },
}
QWEN_TOY = {
    # Images of at most 128 x 128 pixels: 16 image tokens, like the toy LLaVA's scale.
    "pixels": {"min_pixels": 56 * 56, "max_pixels": 128 * 128},
    "vision": {"depth": 2, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "mlp_ratio": 2,
               "patch_size": 14, "spatial_merge_size": 2},
    "text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2,
             "rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3]}},
}  # fmt: skip
QWEN_SPECIALS = {
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "vision_start_token": "<|vision_start|>",
    "vision_end_token": "<|vision_end|>",
}
FAMILIES = ("llava-1.5", "qwen2-vl")
WORDS = ["the", "red", "circle", "left", "of", "a", "small", "blue", "square", "above", "green", "on"]


def preset_sizes(preset: str, slice_layers: int = 2, family: str = "llava-1.5") -> dict:
    """The sizes of a preset; `llava7b-slice` keeps `slice_layers` decoder layers (and 2 vision layers).
    `family` qwen2-vl: Qwen2-VL-7B's sizes for the 7B presets, a toy Qwen2-VL for `toy`."""
    qwen = family == "qwen2-vl"
    if preset == "toy":
        return copy.deepcopy(QWEN_TOY if qwen else TOY)
    sizes = copy.deepcopy(QWEN2VL7B if qwen else LLAVA7B)
    if preset == "llava7b-slice":
        sizes["text"]["num_hidden_layers"] = slice_layers
        sizes["vision"]["depth" if qwen else "num_hidden_layers"] = 2
    elif preset != "llava7b":
        raise ValueError(f"unknown preset {preset!r}; choose toy, llava7b-slice or llava7b")
    return sizes


def _qwen2_vl(sizes: dict, dtype: torch.dtype):
    tokenizer = build_tokenizer([" ".join(WORDS)], QWEN_SPECIALS)
    special = {f"{k}_token_id": getattr(tokenizer, f"{k}_token_id") for k in ("bos", "eos", "pad")}
    text = {"vocab_size": len(tokenizer), **special, **sizes["text"]}
    ids = {f"{name}_id": tokenizer.convert_tokens_to_ids(token) for name, token in QWEN_SPECIALS.items()}
    config = Qwen2VLConfig(text_config=text, vision_config=sizes["vision"], **ids)
    processor = without_video(Qwen2VLProcessor)(
        image_processor=Qwen2VLImageProcessorPil(**sizes.get("pixels", {})),
        tokenizer=tokenizer,
        video_processor=None,
    )
    return Qwen2VLAdapter.model_class._from_config(config, dtype=dtype), processor


def build_adapter(
    sizes: dict,
    capture: str,
    device: torch.device,
    dtype: torch.dtype,
    keep_plain: bool = False,
    family: str = "llava-1.5",
):
    """The `family`'s model of `sizes` with random weights (seed 0) in the adapter real checkpoints get,
    and with `keep_plain` an untouched copy of the model (the adapter sets its own kernel on its model)."""
    torch.manual_seed(0)
    with torch.device(device):
        if family == "qwen2-vl":
            lmm, processor = _qwen2_vl(sizes, dtype)
            adapter_class = Qwen2VLAdapter
        else:
            config, processor = llava_parts(sizes, corpus=[" ".join(WORDS)])
            lmm, adapter_class = LlavaAdapter.model_class._from_config(config, dtype=dtype), LlavaAdapter
    plain = copy.deepcopy(lmm) if keep_plain else None
    return adapter_class(lmm, capture=capture, processor=processor), plain


@dataclass
class SyntheticBatch:
    """B samples of `seq_len` tokens with P phrases of 4 words each, images 480x640 and masks."""

    text: list[str]
    phrase_spans: list[list[tuple[int, int]]]
    lmm_image: list[dict]
    images: list[torch.Tensor]
    pad_meta: list[dict]
    masks: list[torch.Tensor]

    def encode(self, adapter: LlavaAdapter):
        return adapter.encode_text(self.text, self.phrase_spans, self.lmm_image)


def synthetic_batch(
    adapter, batch: int, phrases: int, seq_len: int | None, device: torch.device, seed: int = 0
) -> SyntheticBatch:
    """A batch whose encoded length is `seq_len` (None: the phrases alone), through `adapter`'s image
    transform and prompt: random 480x640 images (one shared by the LMM inputs), random masks."""
    generator = torch.Generator().manual_seed(seed)
    h, w = 480, 640
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator) for _ in range(batch)]
    inputs = adapter.image_transform()(images[0].permute(1, 2, 0).numpy())
    lmm_image = [{k: v.to(device) for k, v in inputs["lmm_image"].items()}]
    base = adapter.encode_text([""], [[]], lmm_image).input_ids.shape[1]
    texts, spans = [], []
    for b in range(batch):
        words = [WORDS[(b + k) % len(WORDS)] for k in range(4 * phrases)]
        if seq_len is not None:
            fill = seq_len - base - len(words)
            if fill < 0:
                raise ValueError(f"seq_len {seq_len} is shorter than the image and {phrases} phrases")
            words += [WORDS[k % len(WORDS)] for k in range(fill)]
        starts = [len(" ".join(words[: 4 * p])) + (1 if p else 0) for p in range(phrases)]
        spans.append([(s, s + len(" ".join(words[4 * p : 4 * p + 4]))) for p, s in enumerate(starts)])
        texts.append(" ".join(words))
    return SyntheticBatch(
        texts,
        spans,
        lmm_image * batch,
        images,
        [inputs["pad_meta"]] * batch,
        [(torch.rand(phrases, h, w, generator=generator) > 0.8).to(device) for _ in range(batch)],
    )
