"""Models of the real architectures with random weights, and synthetic batches of a chosen length.

Presets: `toy` (the embedded default's LLaVA), `llava7b` (llava-hf/llava-1.5-7b-hf: CLIP ViT-L/14 at 336 px
and Vicuna-7B, 32 layers x 32 heads of width 128) and `llava7b-slice` (the 7B's width with a few decoder
layers, what a CPU can run). Weights are random (no download); the tokenizer is word-level, one token per
word, so a batch's sequence length is exactly what is asked.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from flmm.lmm import LlavaAdapter
from flmm.lmm.tiny import llava_parts

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
WORDS = ["the", "red", "circle", "left", "of", "a", "small", "blue", "square", "above", "green", "on"]


def preset_sizes(preset: str, slice_layers: int = 2) -> dict:
    """The sizes of a preset; `llava7b-slice` keeps `slice_layers` decoder layers (and 2 vision layers)."""
    if preset == "toy":
        return copy.deepcopy(TOY)
    sizes = copy.deepcopy(LLAVA7B)
    if preset == "llava7b-slice":
        sizes["text"]["num_hidden_layers"] = slice_layers
        sizes["vision"]["num_hidden_layers"] = 2
    elif preset != "llava7b":
        raise ValueError(f"unknown preset {preset!r}; choose toy, llava7b-slice or llava7b")
    return sizes


def build_adapter(
    sizes: dict, capture: str, device: torch.device, dtype: torch.dtype, keep_plain: bool = False
) -> tuple[LlavaAdapter, torch.nn.Module | None]:
    """A LLaVA-1.5 of `sizes` with random weights (seed 0) in the adapter real checkpoints get, and with
    `keep_plain` an untouched copy of the model (the adapter sets its own attention kernel on its model)."""
    config, processor = llava_parts(sizes, corpus=[" ".join(WORDS)])
    torch.manual_seed(0)
    with torch.device(device):
        lmm = LlavaAdapter.model_class._from_config(config, dtype=dtype)
    plain = copy.deepcopy(lmm) if keep_plain else None
    return LlavaAdapter(lmm, capture=capture, processor=processor), plain


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
    adapter: LlavaAdapter, batch: int, phrases: int, seq_len: int | None, device: torch.device, seed: int = 0
) -> SyntheticBatch:
    """A batch whose encoded length is `seq_len` (None: the phrases alone), through `adapter`'s prompt."""
    generator = torch.Generator().manual_seed(seed)
    side = adapter.lmm.config.vision_config.image_size
    lmm_image = [{"pixel_values": torch.randn(3, side, side, generator=generator).to(device)}]
    base = adapter.encode_text([""], [[]], lmm_image).input_ids.shape[1]
    texts, spans = [], []
    for b in range(batch):
        words = [WORDS[(b + k) % len(WORDS)] for k in range(4 * phrases)]
        if seq_len is not None:
            fill = seq_len - base - len(words)
            if fill < 0:
                raise ValueError(f"seq_len {seq_len} is shorter than the image and {phrases} phrases")
            words += [WORDS[k % len(WORDS)] for k in range(fill)]
        text = " ".join(words)
        starts = [len(" ".join(words[: 4 * p])) + (1 if p else 0) for p in range(phrases)]
        spans.append([(s, s + len(" ".join(words[4 * p : 4 * p + 4]))) for p, s in enumerate(starts)])
        texts.append(text)
    h, w = 480, 640
    resized_h = side * h // w
    pad_top = (side - resized_h) // 2
    pads = {"pad_top": pad_top, "pad_bottom": side - resized_h - pad_top, "pad_left": 0, "pad_right": 0}
    meta = {"orig_h": h, "orig_w": w, "resized_h": resized_h, "resized_w": side, "size": side, **pads}
    return SyntheticBatch(
        texts,
        spans,
        lmm_image * batch,
        [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator) for _ in range(batch)],
        [meta] * batch,
        [(torch.rand(phrases, h, w, generator=generator) > 0.8).to(device) for _ in range(batch)],
    )
