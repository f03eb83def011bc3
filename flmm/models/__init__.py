"""Trainable models on top of the frozen LMM: U-Net mask head, SAM refiner, the model joining them, losses.

Importing this package registers `UNetMaskHead`, `SamRefiner` and `GroundingModel` in `flmm.registry.MODELS`.
"""

from flmm.models.grounding import GroundingModel, GroundingOutput
from flmm.models.losses import bce_dice, dice_loss, grounding_losses, resize_target
from flmm.models.mask_head import UNetMaskHead, content_window, crop_padding, normalize_attention
from flmm.models.sam_build import build_sam, build_tiny_sam
from flmm.models.sam_refiner import RefinerOutput, SamRefiner, decode_masks

__all__ = [
    "GroundingModel",
    "GroundingOutput",
    "RefinerOutput",
    "SamRefiner",
    "UNetMaskHead",
    "bce_dice",
    "build_sam",
    "build_tiny_sam",
    "content_window",
    "crop_padding",
    "decode_masks",
    "dice_loss",
    "grounding_losses",
    "normalize_attention",
    "resize_target",
]
