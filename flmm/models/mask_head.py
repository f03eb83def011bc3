"""The trainable U-Net mask head (DESIGN §1.4-1.5) and the crop of LLaVA's pad region from its output.

The head turns per-phrase attention maps `(P, C_in, gh, gw)` (C_in = layers x heads of the frozen LMM) into
square coarse mask logits `(P, S, S)` (S = 64 by default) that cover the padded square LMM input. The
attention grid is assumed to cover that same padded square, as it does for LLaVA's "pad" preprocessing.

Pad meta (one per image, produced by the data layer's pad transform) is a mapping, or an object with
attributes, with these integer fields, all in pixels:
`orig_h, orig_w` (the original image), `resized_h, resized_w` (the image inside the square LMM input),
`pad_top, pad_bottom, pad_left, pad_right` (padding of the square input; side = resized_h + pad_top +
pad_bottom = resized_w + pad_left + pad_right, e.g. 336).
"""

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from flmm.registry import MODELS

PAD_META_FIELDS = (
    "orig_h",
    "orig_w",
    "resized_h",
    "resized_w",
    "pad_top",
    "pad_bottom",
    "pad_left",
    "pad_right",
)


def normalize_attention(attention: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Divide each channel of `(P, C, gh, gw)` by its sum over the grid, so every map sums to 1.

    This drops the share of attention that went to text tokens and the BOS sink. All-zero maps stay zero.
    """
    return attention / attention.sum(dim=(-2, -1), keepdim=True).clamp_min(eps)


def _conv_norm_relu(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    # No conv bias: GroupNorm right after it would cancel it.
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.GroupNorm(1, out_channels),
        nn.ReLU(inplace=True),
    )


def _double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        _conv_norm_relu(in_channels, out_channels, 3), _conv_norm_relu(out_channels, out_channels, 3)
    )


class _Up(nn.Module):
    """Bilinear x2, 1x1 conv to the skip's channels, concatenation with the skip, two 3x3 convs."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.reduce = _conv_norm_relu(in_channels, out_channels, 1)
        self.block = _double_conv(2 * out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.block(torch.cat([skip, self.reduce(x)], dim=1))


@MODELS.register_module()
class UNetMaskHead(nn.Module):
    """Attention maps `(P, in_channels, gh, gw)` -> coarse mask logits `(P, size, size)`.

    Each channel is normalised to sum 1 over the grid, the maps are upsampled bilinearly to `size x size`,
    then a U-Net with `len(channels)` stages (two 3x3 conv + GroupNorm(1 group) + ReLU per block, max-pool
    down, bilinear x2 + 1x1 conv up, skip connections) and a 1x1 conv give one logit map. With the default
    channels and in_channels = 1024 (32 layers x 32 heads) it has about 7.77 M parameters.
    """

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int] = (64, 128, 256, 512),
        size: int = 64,
        eps: float = 1e-12,
    ) -> None:
        super().__init__()
        channels = list(channels)
        if size % 2 ** (len(channels) - 1) != 0:
            raise ValueError(
                f"mask head size={size} must be divisible by 2**(len(channels)-1)="
                f"{2 ** (len(channels) - 1)} so every stage halves it exactly"
            )
        self.in_channels = in_channels
        self.size = size
        self.eps = eps
        self.down = nn.ModuleList(
            _double_conv(c_in, c_out)
            for c_in, c_out in zip([in_channels, *channels[:-1]], channels, strict=True)
        )
        self.up = nn.ModuleList(
            _Up(c_in, c_out) for c_in, c_out in zip(channels[:0:-1], channels[-2::-1], strict=True)
        )
        self.logits = nn.Conv2d(channels[0], 1, kernel_size=1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, attention: torch.Tensor) -> torch.Tensor:
        """`(P, in_channels, gh, gw)` attention -> `(P, size, size)` logits over the padded square input."""
        if attention.dim() != 4 or attention.shape[1] != self.in_channels:
            raise ValueError(
                f"mask head expects attention of shape (P, {self.in_channels}, gh, gw), "
                f"got {tuple(attention.shape)}"
            )
        # Normalise and resize in fp32: per-cell attention is ~1/576, small for bf16 sums.
        x = normalize_attention(attention.float(), self.eps)
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        # Channels-last convolutions are faster with oneDNN and cuDNN (a toy training step's U-Net, forward
        # and backward on a CPU: 0.59 s instead of 0.81 s); the values are the same up to rounding.
        x = x.to(self.logits.weight.dtype).contiguous(memory_format=torch.channels_last)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for up, skip in zip(self.up, skips[-2::-1], strict=True):
            x = up(x, skip)
        return self.logits(x)[:, 0]


def _meta_field(meta: Any, name: str) -> int:
    try:
        value = meta[name] if isinstance(meta, Mapping) else getattr(meta, name)
    except (KeyError, AttributeError):
        raise KeyError(
            f"pad meta is missing field {name!r}; expected the fields {', '.join(PAD_META_FIELDS)}"
        ) from None
    return int(value)


def content_window(meta: Any, map_size: int) -> tuple[int, int, int, int]:
    """`(top, left, height, width)` of the image content inside a square map of side `map_size`.

    The pad meta is given in pixels of the square LMM input; it is scaled to the map and rounded, keeping
    at least one row and column inside the map.
    """
    fields = {name: _meta_field(meta, name) for name in PAD_META_FIELDS}
    side = fields["resized_h"] + fields["pad_top"] + fields["pad_bottom"]
    if side != fields["resized_w"] + fields["pad_left"] + fields["pad_right"] or side <= 0:
        raise ValueError(f"pad meta does not describe a square input: {fields}")
    scale = map_size / side
    top = min(round(fields["pad_top"] * scale), map_size - 1)
    left = min(round(fields["pad_left"] * scale), map_size - 1)
    height = min(max(round(fields["resized_h"] * scale), 1), map_size - top)
    width = min(max(round(fields["resized_w"] * scale), 1), map_size - left)
    return top, left, height, width


def crop_padding(
    logits: torch.Tensor,
    image_index: torch.Tensor,
    pad_metas: Sequence[Any],
    resize_to_original: bool = False,
) -> list[torch.Tensor]:
    """Cut the pad region out of square per-phrase maps.

    Args:
        logits: `(P, S, S)` maps over the padded square LMM input (the head's output).
        image_index: `(P,)` index of each phrase's image in `pad_metas`.
        pad_metas: one pad meta per image (fields in the module docstring).
        resize_to_original: resize each crop bilinearly to its image's `(orig_h, orig_w)`.

    Returns:
        P tensors in phrase order, `(h_b, w_b)` — the content window of image b in the map, at the image's
        aspect — or `(orig_h_b, orig_w_b)` with `resize_to_original`. Gradients flow through the crop.
    """
    if logits.dim() != 3 or logits.shape[-1] != logits.shape[-2]:
        raise ValueError(f"crop_padding expects square maps (P, S, S), got {tuple(logits.shape)}")
    if image_index.shape != (logits.shape[0],):
        raise ValueError(f"image_index must have shape ({logits.shape[0]},), got {tuple(image_index.shape)}")
    crops: list[torch.Tensor | None] = [None] * logits.shape[0]
    for b, meta in enumerate(pad_metas):
        phrases = (image_index == b).nonzero(as_tuple=True)[0]
        if phrases.numel() == 0:
            continue
        top, left, height, width = content_window(meta, logits.shape[-1])
        crop = logits[phrases, top : top + height, left : left + width]
        if resize_to_original:
            size = (_meta_field(meta, "orig_h"), _meta_field(meta, "orig_w"))
            crop = F.interpolate(crop[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        for p, phrase_crop in zip(phrases.tolist(), crop, strict=True):
            crops[p] = phrase_crop
    missing = [p for p, crop in enumerate(crops) if crop is None]
    if missing:
        raise ValueError(f"phrases {missing} have an image index outside 0..{len(pad_metas) - 1}")
    return crops
