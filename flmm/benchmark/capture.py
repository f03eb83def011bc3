"""The `capture` suite: the frozen LMM forward without capture ("plain", the model's own sdpa kernel) vs
hooked capture vs eager capture, over sequence lengths, at a real model's width, for LLaVA-1.5 and for
Qwen2-VL (M-RoPE positions, native-resolution image tokens).

`plain` is the forward a user of the LMM alone runs (hidden states out, no logits beyond the last token);
`hooked` and `eager` are the adapter's forward, which also returns every phrase token's attention over the
image in every layer and head. One model is built per mode from the same seed.
"""

from __future__ import annotations

import itertools

import torch

from flmm.benchmark.measure import measure
from flmm.benchmark.models import FAMILIES, build_adapter, preset_sizes, synthetic_batch

MODES = ("plain", "hooked", "eager")


def forward_work(mode: str, adapter, plain, data) -> tuple[int, object]:
    """(sequence length, a call running one forward of `mode` over `data`)."""
    encoded = data.encode(adapter)
    if mode == "plain":
        kwargs = adapter.model_inputs(encoded.input_ids, encoded.attention_mask, data.lmm_image)
        kwargs.update(use_cache=False, output_hidden_states=True, logits_to_keep=1)
        return encoded.input_ids.shape[1], lambda: plain(**kwargs)
    inputs = (encoded.input_ids, encoded.attention_mask, encoded.phrase_ids, data.lmm_image)
    return encoded.input_ids.shape[1], lambda: adapter(*inputs)


def capture_rows(
    preset: str,
    seq_lens: list[int],
    device: torch.device,
    dtype: torch.dtype,
    batch: int = 1,
    phrases: int = 3,
    repeats: int = 3,
    slice_layers: int = 2,
    families: tuple[str, ...] = FAMILIES,
) -> list[dict]:
    """One row per (family, mode, seq_len): {"model", "mode", "seq_len", "seconds", "peak_bytes",
    "extra_bytes"}."""
    rows = []
    for family, mode in itertools.product(families, MODES):
        sizes = preset_sizes(preset, slice_layers, family)
        capture = "hooked" if mode == "plain" else mode
        adapter, plain = build_adapter(sizes, capture, device, dtype, mode == "plain", family)
        for seq_len in seq_lens:
            length, work = forward_work(
                mode, adapter, plain, synthetic_batch(adapter, batch, phrases, seq_len, device)
            )
            with torch.no_grad():
                result = measure(work, device, repeats)
            rows.append(
                {
                    "model": f"{family} ({preset})",
                    "mode": mode,
                    "seq_len": int(length),
                    "seconds": result.seconds,
                    "peak_bytes": result.peak_bytes,
                    "extra_bytes": result.extra_bytes,
                }
            )
        del adapter, plain
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows
