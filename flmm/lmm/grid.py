"""Where an LMM's image tokens sit on the image: from per-token attention to `(C, gh, gw)` maps.

A `GridLayout` describes the image tokens of one sample in sequence order. LLaVA-1.5 has one base grid
(`base_hw`, row-major). LLaVA-NeXT follows it with the any-res grid exactly as transformers packs it
(`LlavaNextModel.pack_image_features`): the crops' tokens tiled into one `(rows, cols)` map, unpadded to the
image's aspect ratio, with one newline token closing every row. `to_grid` drops the newline tokens, resizes
the any-res map bilinearly to the base grid and concatenates it after the base channels, so a NeXT map has
2 x C channels: base first, any-res second.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class GridLayout:
    """The image tokens of one sample: `base_hw` grid, then optionally an any-res grid with newline tokens.

    base_hw: (gh, gw) of the base grid. anyres_hw: (rows, cols) of the unpadded any-res grid, not counting
    the newline column; None for single-grid models.
    """

    base_hw: tuple[int, int]
    anyres_hw: tuple[int, int] | None = None

    @property
    def num_tokens(self) -> int:
        """How many image-token positions the sample's sequence must hold."""
        count = self.base_hw[0] * self.base_hw[1]
        if self.anyres_hw is not None:
            count += self.anyres_hw[0] * (self.anyres_hw[1] + 1)
        return count

    @property
    def channel_factor(self) -> int:
        """Channels of `to_grid`'s output per input channel (2 with an any-res grid)."""
        return 1 if self.anyres_hw is None else 2

    def to_grid(self, columns: torch.Tensor) -> torch.Tensor:
        """`(P, C, N)` attention over this sample's image tokens (N >= num_tokens) -> `(P, k*C, gh, gw)`."""
        phrases, channels, _ = columns.shape
        gh, gw = self.base_hw
        base = columns[..., : gh * gw].reshape(phrases, channels, gh, gw)
        if self.anyres_hw is None:
            return base
        rows, cols = self.anyres_hw
        anyres = columns[..., gh * gw : self.num_tokens].reshape(phrases, channels, rows, cols + 1)
        anyres = F.interpolate(anyres[..., :cols], size=(gh, gw), mode="bilinear", align_corners=False)
        return torch.cat([base, anyres], dim=1)


@dataclass(frozen=True)
class GridMeta:
    """Grid facts of one forward batch.

    size: (gh, gw) of the output maps. num_layers, num_heads: of the decoder; channels = k * L * H with
    channel = [k-block] * L*H + layer * H + head (k-block 0: base grid, 1: any-res grid resized).
    layouts: one `GridLayout` per sample. frame: what the grid covers — "pixel_values" (LLaVA-1.5: the square
    input as the data layer made it, padding included) or "image" (LLaVA-NeXT: the whole original image,
    no padding, since the base crop is the image resized to a square and the any-res grid is unpadded).
    """

    size: tuple[int, int]
    num_layers: int
    num_heads: int
    channels: int
    layouts: tuple[GridLayout, ...]
    frame: str
