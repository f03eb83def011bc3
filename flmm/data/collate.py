"""Collate grounding samples of different sizes and phrase counts into one batch.

Per-sample flags (`phrases_select_words`) become bool tensors; everything that varies per image (original
images, masks at original size, texts, phrase spans, queries, and `lmm_image`, the LMM's inputs of each
image, which its adapter batches) stays a list; other tensors are stacked. The records that broke on the
way (`flmm.data.datasets.Skipped`) travel in `skipped`, so that the process that trains or evaluates counts
them, whichever data worker or rank met them.
"""

from __future__ import annotations

import torch

_LIST_KEYS = (
    "image", "image_id", "image_file", "text", "phrase_spans", "masks", "queries", "pad_meta", "lmm_image"
)  # fmt: skip
_FLAG_KEYS = ("phrases_select_words",)


def collate_grounding(samples: list[dict]) -> dict:
    """Batch a list of samples, leaving out broken evaluation samples (those with no `image`).

    Returns a dict with `images` as B uint8 tensors `(3, H_i, W_i)`, `masks` as B bool tensors
    `(P_i, H_i, W_i)`, `phrases_select_words (B,)` bool when the samples carry it, lists for the rest, and
    `skipped`: every sample's broken records. When every sample was broken, only `skipped` (see `has_samples`).
    """
    skipped = [record for s in samples for record in s.get("skipped", [])]
    samples = [s for s in samples if "image" in s]
    if not samples:
        return {"skipped": skipped}
    batch: dict = {key: [s[key] for s in samples] for key in _LIST_KEYS if key in samples[0]}
    batch["skipped"] = skipped
    batch["images"] = [torch.from_numpy(s["image"]).permute(2, 0, 1).contiguous() for s in samples]
    del batch["image"]
    for key in samples[0]:
        if key in _FLAG_KEYS:
            batch[key] = torch.tensor([bool(s[key]) for s in samples], dtype=torch.bool)
        elif key not in (*_LIST_KEYS, "skipped"):
            batch[key] = stack_padded([s[key] for s in samples])
    return batch


def has_samples(batch: dict) -> bool:
    """False for the batch of a loader step whose samples were all broken (it carries only `skipped`)."""
    return "images" in batch


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
