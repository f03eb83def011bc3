"""The grounding model: U-Net mask head + optional SAM refiner, on the frozen LMM adapter's tensors.

No LMM lives here: the input is what an adapter returns (per-phrase attention, phrase token hidden states),
plus the pad meta of the LMM preprocessing and the original images, so the model is testable with random
tensors. Configs name it with `type: GroundingModel` and give `mask_head` / `refiner` as nested configs.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from flmm.models.mask_head import crop_padding
from flmm.models.sam_refiner import RefinerOutput
from flmm.registry import MODELS


@dataclass
class GroundingOutput:
    """Outputs for P phrases (all logits; a pixel is predicted when its logit > 0).

    coarse_square: `(P, S, S)` mask-head logits over the padded square LMM input (S = 64 by default).
    coarse: P maps `(h_p, w_p)`, `coarse_square` with the padding cropped out (content aspect).
    refined: P maps `(H_i, W_i)` at the original image size, or None without a refiner.
    predictions: P maps `(H_i, W_i)`: `refined`, or the coarse maps resized to the original size.
    refiner: the refiner's full output (low-res logits, IoU predictions, box prompts), or None.
    """

    coarse_square: torch.Tensor
    coarse: list[torch.Tensor]
    refined: list[torch.Tensor] | None
    predictions: list[torch.Tensor]
    refiner: RefinerOutput | None


def _build(module: nn.Module | Mapping[str, Any]) -> nn.Module:
    return module if isinstance(module, nn.Module) else MODELS.build(dict(module))


@MODELS.register_module()
class GroundingModel(nn.Module):
    """Mask head, then (optionally) the SAM refiner.

    Args:
        mask_head: a module or a config such as `{type: UNetMaskHead, in_channels: 1024}`.
        refiner: a module, a config such as `{type: SamRefiner, hidden_size: 4096, num_layers: 32,
            model_type: vit_l, checkpoint: ...}`, or None to predict from the coarse masks alone.
    """

    def __init__(
        self,
        mask_head: nn.Module | Mapping[str, Any],
        refiner: nn.Module | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.mask_head = _build(mask_head)
        self.refiner = None if refiner is None else _build(refiner)

    def forward(
        self,
        attention: torch.Tensor,
        image_index: torch.Tensor,
        pad_metas: Sequence[Any],
        images: Sequence[torch.Tensor] | None = None,
        hidden: torch.Tensor | None = None,
        hidden_mask: torch.Tensor | None = None,
        image_embeddings: torch.Tensor | None = None,
    ) -> GroundingOutput:
        """Ground P phrases of B images.

        Args:
            attention: `(P, C, gh, gw)` per-phrase attention over the image grid, C = layers x heads.
            image_index: `(P,)` long, the image of each phrase (index into `pad_metas` and `images`).
            pad_metas: B pad metas of the LMM preprocessing (fields: `flmm.models.mask_head`).
            images: B original images, uint8 `(3, H_i, W_i)`; needed with a refiner.
            hidden: `(P, T, L, D)` phrase-token hidden states; needed with a refiner.
            hidden_mask: `(P, T)` bool, True on real phrase tokens; needed with a refiner.
            image_embeddings: optional cached SAM embeddings `(B, C_sam, h, w)` of `images`.
        """
        coarse_square = self.mask_head(attention)
        coarse = crop_padding(coarse_square, image_index, pad_metas)
        if self.refiner is None:
            predictions = crop_padding(coarse_square, image_index, pad_metas, resize_to_original=True)
            return GroundingOutput(coarse_square, coarse, None, predictions, None)
        if images is None or hidden is None or hidden_mask is None:
            raise ValueError("a GroundingModel with a refiner needs images, hidden and hidden_mask")
        if len(images) != len(pad_metas):
            raise ValueError(f"got {len(images)} images but {len(pad_metas)} pad metas")
        refined = self.refiner(images, coarse, image_index, hidden, hidden_mask, image_embeddings)
        return GroundingOutput(coarse_square, coarse, refined.masks, refined.masks, refined)
