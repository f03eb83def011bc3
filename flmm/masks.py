"""Binary masks -> their tight box and their COCO RLE, the one place every layer takes them from.

A mask is `(H, W)` (or `(N, H, W)`), numpy or torch, of any dtype: nonzero pixels are inside. Pixel
(row r, column c) covers [c, c + 1) x [r, r + 1), so a box `[x0, y0, x1, y1]` has exclusive max edges:
`x1 - x0` is the width in pixels and a one-pixel mask at (r, c) has the box `[c, r, c + 1, r + 1]`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from pycocotools import mask as mask_utils


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Masks `(N, H, W)` -> int64 boxes `(N, 4)` `[x0, y0, x1, y1]`, max edges exclusive, on their device.

    An empty mask gives `[0, 0, 0, 0]`, a box of no area. No value leaves the device (no host sync).
    """
    inside = masks != 0
    n, h, w = inside.shape
    rows, cols = inside.any(dim=2), inside.any(dim=1)
    ys = torch.arange(h, device=inside.device).expand(n, h)
    xs = torch.arange(w, device=inside.device).expand(n, w)
    boxes = torch.stack(
        [
            torch.where(cols, xs, w).amin(dim=1),
            torch.where(rows, ys, h).amin(dim=1),
            torch.where(cols, xs + 1, 0).amax(dim=1),
            torch.where(rows, ys + 1, 0).amax(dim=1),
        ],
        dim=1,
    )
    return torch.where(rows.any(dim=1, keepdim=True), boxes, 0)


def mask_box(mask: np.ndarray | torch.Tensor) -> list[int] | None:
    """Mask `(H, W)` -> `[x0, y0, x1, y1]` in pixels, max edges exclusive (`mask_boxes` of one mask);
    None when the mask is empty."""
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(np.ascontiguousarray(mask))  # from_numpy refuses negative strides
    box = mask_boxes(mask[None])[0].tolist()
    return box if box[2] > box[0] else None


def box_xywh(box: Sequence[float]) -> list[float]:
    """`[x0, y0, x1, y1]` (max edges exclusive) -> COCO `[x, y, w, h]` as floats, like COCO's `bbox`."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return [x0, y0, x1 - x0, y1 - y0]


def mask_rle(mask: np.ndarray | torch.Tensor) -> dict:
    """Mask `(H, W)` -> COCO compressed RLE `{"size": [H, W], "counts": str}`, ready for JSON.

    `pycocotools.mask.decode` reads it back (with `counts` as str or encoded to bytes).
    """
    if isinstance(mask, torch.Tensor):
        mask = mask.cpu().numpy()
    # nonzero is inside, as for the boxes (a float mask cast to uint8 would drop values below 1)
    rle = mask_utils.encode(np.asfortranarray(mask != 0, dtype=np.uint8))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
