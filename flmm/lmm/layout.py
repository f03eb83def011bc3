"""Where an LMM's image tokens fall on the image, and the shared turn from token attention to grid maps.

Every family says, for each image token of a sample in sequence order, which cell of which *view* it fills
(`ImageLayout.token_cells`, `(N, 3)` long: view, row, col; -1 for tokens that fill no cell, such as
LLaVA-NeXT's row-break tokens). A view is one grid over the image: LLaVA-1.5 has one (24 x 24), LLaVA-NeXT
two (the base image, and the mosaic of its any-res tiles unpadded to the image's aspect), Qwen2-VL one of
the image's own aspect. `ImageLayout.to_grid` scatters per-token attention into the views, resizes each to
the adapter's common grid bilinearly and stacks the views on channels (view-major), so the mask head sees
`(P, V * C, gh, gw)` whatever the family, the way the reference stacks LLaVA-NeXT's two grids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ImageLayout:
    """The image tokens of one sample.

    token_cells: `(N, 3)` long, the (view, row, col) each image token fills, in sequence order; all -1 for a
        token that fills no cell.
    view_shapes: `(rows, cols)` of each view's grid.
    """

    token_cells: torch.Tensor
    view_shapes: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        cells = self.token_cells
        if cells.dim() != 2 or cells.shape[1] != 3:
            raise ValueError(f"token_cells must be (N, 3), got {tuple(cells.shape)}")
        placed = cells[cells[:, 0] >= 0]
        for view, (rows, cols) in enumerate(self.view_shapes):
            in_view = placed[placed[:, 0] == view]
            if len(in_view) and not ((in_view[:, 1] < rows).all() and (in_view[:, 2] < cols).all()):
                raise ValueError(f"token_cells fall outside view {view} of {rows} x {cols}")
        if len(placed) and int(placed[:, 0].max()) >= len(self.view_shapes):
            raise ValueError(f"token_cells name view {int(placed[:, 0].max())} of {len(self.view_shapes)}")

    @property
    def num_tokens(self) -> int:
        """How many image-token positions the sample's sequence holds."""
        return int(self.token_cells.shape[0])

    @property
    def num_views(self) -> int:
        return len(self.view_shapes)

    def to_grid(self, columns: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """`(P, C, N')` attention over this sample's image tokens (N' >= N; the first N are used) ->
        `(P, V * C, gh, gw)`: each view scattered into its grid, resized to `grid`, views stacked."""
        phrases, channels, _ = columns.shape
        cells = self.token_cells.to(columns.device)
        views = []
        for view, (rows, cols) in enumerate(self.view_shapes):
            tokens = (cells[:, 0] == view).nonzero(as_tuple=True)[0]
            flat = columns.new_zeros((phrases, channels, rows * cols))
            flat[..., cells[tokens, 1] * cols + cells[tokens, 2]] = columns[..., tokens]
            maps = flat.view(phrases, channels, rows, cols)
            if (rows, cols) != tuple(grid):
                maps = F.interpolate(maps, size=tuple(grid), mode="bilinear", align_corners=False)
            views.append(maps)
        return torch.cat(views, dim=1)


class RepeatedViewLayout(ImageLayout):
    """A layout whose tokens fill view 0 only, with view 0 repeated as view 1: an image shown as one tile
    (InternVL, Idefics3), where that tile is the whole image at tile size, which is what the global view
    (thumbnail) is, so the head still gets its two views' channels."""

    def to_grid(self, columns: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """`(P, C, N')` -> `(P, 2 * C, gh, gw)`: view 0's maps, twice."""
        maps = super().to_grid(columns, grid)
        channels = columns.shape[1]
        return torch.cat([maps[:, :channels], maps[:, :channels]], dim=1)


def raster_cells(rows: int, cols: int, view: int = 0, row_break: bool = False) -> torch.Tensor:
    """`(rows * cols (+ rows), 3)` cells of a row-major grid; `row_break` adds one cell-less token after
    every row (LLaVA-NeXT's image newline)."""
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    cells = torch.stack([torch.full_like(r, view), r, c], dim=-1)
    if row_break:
        cells = torch.cat([cells, torch.full((rows, 1, 3), -1)], dim=1)
    return cells.reshape(-1, 3)


@dataclass(frozen=True)
class GridMeta:
    """Grid facts of one forward batch.

    size: (gh, gw) of the output maps. num_layers, num_heads: of the captured attention layers; channels =
    V * L * H with channel = view * L*H + layer * H + head. layouts: one `ImageLayout` per sample.
    """

    size: tuple[int, int]
    num_layers: int
    num_heads: int
    channels: int
    layouts: tuple[ImageLayout, ...]


def check_view_counts(layouts: Sequence[ImageLayout], expected: int) -> None:
    """ValueError unless every sample has `expected` views (the head's channels are fixed per family)."""
    counts = sorted({layout.num_views for layout in layouts})
    if counts != [expected]:
        raise ValueError(f"expected {expected} views per image (the family's num_views), got {counts}")
