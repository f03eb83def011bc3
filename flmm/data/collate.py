"""Collate grounding samples of different sizes and phrase counts into one batch.

Per-sample flags (`phrases_select_words`) become bool tensors; everything that varies per image (original
images, masks at original size, texts, phrase spans, queries, and `lmm_image`, the LMM's inputs of each
image, which its adapter batches) stays a list; other tensors are stacked.
"""

from __future__ import annotations

import torch

_LIST_KEYS = (
    "image", "image_id", "image_file", "text", "phrase_spans", "masks", "queries", "pad_meta", "lmm_image"
)  # fmt: skip
_FLAG_KEYS = ("phrases_select_words",)


def collate_grounding(samples: list[dict | None]) -> dict | None:
    """Batch a list of samples, leaving out the None of broken evaluation samples (None if all are).

    Returns a dict with `images` as B uint8 tensors `(3, H_i, W_i)`, `masks` as B bool tensors `(P_i, H_i, W_i)`,
    `phrases_select_words (B,)` bool when the samples carry it, and lists for the rest.
    """
    samples = [s for s in samples if s is not None]
    if not samples:
        return None
    batch: dict = {key: [s[key] for s in samples] for key in _LIST_KEYS if key in samples[0]}
    batch["images"] = [torch.from_numpy(s["image"]).permute(2, 0, 1).contiguous() for s in samples]
    del batch["image"]
    for key in samples[0]:
        if key in _FLAG_KEYS:
            batch[key] = torch.tensor([bool(s[key]) for s in samples], dtype=torch.bool)
        elif key not in _LIST_KEYS:
            batch[key] = stack_padded([s[key] for s in samples])
    return batch


def stack_padded(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Stack tensors, zero-padding dim 0 to the longest (any-res images have different crop counts)."""
    longest = max(t.shape[0] for t in tensors) if tensors[0].dim() > 0 else 0
    padded = [
        torch.cat([t, t.new_zeros((longest - t.shape[0], *t.shape[1:]))])
        if t.dim() and t.shape[0] < longest
        else t
        for t in tensors
    ]
    return torch.stack(padded)
