"""Grounding probe: does a frozen LMM's attention point at the object a phrase names, before any training?

For every phrase (a referring expression of a RefCOCO-format split, one pass each), the adapter's attention
`(P, L*H, gh, gw)` is normalised per channel over the grid (as the mask head sees it), averaged over layers
and heads, and its peak cell is mapped back to the original image through the pad meta. The phrase is a
hit when that cell touches its object's mask (the pointing game at the resolution of the image-token grid).
`chance` is what a uniformly random cell would score: the share of grid cells that touch the object.
"""

from __future__ import annotations

import re
from collections import defaultdict

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from flmm.data.collate import collate_grounding, has_samples
from flmm.lmm.adapter import LMMAdapter
from flmm.models.mask_head import normalize_attention

RELATION = re.compile(r"\b(above|below|under|underneath|left of|right of|next to|near|close to)\b")
LOCATION = re.compile(r"\b(left|right|top|bottom|leftmost|rightmost|topmost|lowest|middle|center|corner)\b")


def expression_kind(expression: str) -> str:
    """ "relation", "location" or "attribute", from the words of a synthetic-world expression."""
    text = expression.lower()
    return "relation" if RELATION.search(text) else "location" if LOCATION.search(text) else "attribute"


def cell_hits(mask: np.ndarray, grid: tuple[int, int], meta: dict) -> np.ndarray:
    """`(gh, gw)` bool: which grid cells of the padded square input touch `mask` `(H, W)` (original size)."""
    gh, gw = grid
    side = meta["resized_h"] + meta["pad_top"] + meta["pad_bottom"]
    sy, sx = meta["orig_h"] / meta["resized_h"], meta["orig_w"] / meta["resized_w"]
    ys, xs = np.nonzero(mask)
    # Every mask pixel's centre, in the padded square frame, names the cell it falls in.
    cy = np.floor(((ys + 0.5) / sy + meta["pad_top"]) * gh / side).astype(int).clip(0, gh - 1)
    cx = np.floor(((xs + 0.5) / sx + meta["pad_left"]) * gw / side).astype(int).clip(0, gw - 1)
    hits = np.zeros((gh, gw), dtype=bool)
    hits[cy, cx] = True
    return hits


@torch.no_grad()
def probe_grounding(
    adapter: LMMAdapter, dataset: Dataset, batch_size: int = 16, progress: bool = True
) -> dict:
    """Pointing accuracy of the layer/head-averaged attention over `dataset` (one phrase per sample).

    Returns {"pointing", "chance", "n", "by_kind": {kind: {"pointing", "n"}}, "by_layer": [pointing of
    each layer's head-averaged map]}.
    """
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_grounding)
    hits, chance, kinds, layer_hits = [], [], [], []
    for batch in tqdm(loader, desc="probing", disable=not progress):
        if not has_samples(batch):
            continue
        encoded = adapter.encode_text(batch["text"], batch["phrase_spans"], batch["lmm_image"])
        out = adapter(encoded.input_ids, encoded.attention_mask, encoded.phrase_ids, batch["lmm_image"])
        maps = normalize_attention(out.attention.float())
        p, _, gh, gw = maps.shape
        # channel = view * L*H + layer * H + head: average views and heads, keep layers
        per_layer = maps.view(p, -1, adapter.num_layers, adapter.num_heads, gh, gw).mean(dim=(1, 3))
        phrases = [(b, k) for b, masks in enumerate(batch["masks"]) for k in range(len(masks))]
        for row, (b, k) in enumerate(phrases):
            touched = cell_hits(batch["masks"][b][k].numpy(), (gh, gw), batch["pad_meta"][b])
            peak = int(per_layer[row].mean(0).argmax())
            hits.append(bool(touched.flat[peak]))
            chance.append(float(touched.mean()))
            layer_hits.append([bool(touched.flat[int(m.argmax())]) for m in per_layer[row]])
            kinds.append(expression_kind(batch["queries"][b][k]["expression"]))
    by_kind: dict[str, list[bool]] = defaultdict(list)
    for kind, hit in zip(kinds, hits):
        by_kind[kind].append(hit)
    return {
        "pointing": float(np.mean(hits)) if hits else float("nan"),
        "chance": float(np.mean(chance)) if chance else float("nan"),
        "n": len(hits),
        "by_kind": {k: {"pointing": float(np.mean(v)), "n": len(v)} for k, v in sorted(by_kind.items())},
        "by_layer": np.mean(layer_hits, axis=0).round(4).tolist() if layer_hits else [],
    }
