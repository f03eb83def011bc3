"""Training losses of DESIGN §1.8: BCE-with-logits + Dice (eps 1) on the coarse and the refined masks.

Each term is computed per phrase and averaged over phrases, so every phrase weighs the same whatever its
image size (per phrase, BCE is the mean over its pixels). The refined output is compared with the
full-resolution target at the original image size. The coarse output lives on a small grid (the
64x64 map cropped to the content, e.g. 64x48): its target is the full-resolution mask area-averaged onto
that grid (each cell gets the fraction of its pixels inside the mask) and thresholded at 0.5, so the target
stays binary and every full-resolution pixel counts, unlike nearest-neighbour sampling.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def resize_target(target: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Binary mask `(H, W)` -> float `(h, w)` in {0, 1}: area average onto the grid, then >= 0.5."""
    area = F.interpolate(target.float()[None, None], size=tuple(size), mode="area")[0, 0]
    return (area >= 0.5).float()


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """`1 - (2 sum(p t) + eps) / (sum(p) + sum(t) + eps)` with p = sigmoid(logits), over all elements."""
    prob = logits.sigmoid()
    return 1 - (2 * (prob * target).sum() + eps) / (prob.sum() + target.sum() + eps)


def bce_dice(
    logits: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over phrases of per-phrase mean BCE-with-logits and of per-phrase Dice loss.

    `logits[p]` and `targets[p]` must have the same shape; targets hold 0/1 values.
    """
    if len(logits) != len(targets) or not logits:
        raise ValueError(
            f"need one target per phrase and at least one phrase, got {len(logits)} / {len(targets)}"
        )
    bce, dice = [], []
    for p, (x, t) in enumerate(zip(logits, targets, strict=True)):
        if x.shape != t.shape:
            raise ValueError(
                f"phrase {p}: logits {tuple(x.shape)} and target {tuple(t.shape)} differ in shape"
            )
        x, t = x.float(), t.to(x.device, torch.float32)
        bce.append(F.binary_cross_entropy_with_logits(x, t))
        dice.append(dice_loss(x, t))
    return torch.stack(bce).mean(), torch.stack(dice).mean()


def grounding_losses(
    coarse: Sequence[torch.Tensor],
    refined: Sequence[torch.Tensor] | None,
    targets: Sequence[torch.Tensor],
) -> dict[str, torch.Tensor]:
    """The four loss terms (weight 1 each) and their sum.

    Args:
        coarse: P coarse logit maps `(h_p, w_p)`, cropped to the image content.
        refined: P refined logit maps `(H_i, W_i)` at the original size, or None (coarse terms only).
        targets: P binary masks `(H_i, W_i)` at the original image size.

    Returns:
        `loss_coarse_bce`, `loss_coarse_dice`, and with `refined` `loss_refined_bce`, `loss_refined_dice`;
        `loss` is their sum.
    """
    if len(targets) != len(coarse):
        raise ValueError(f"got {len(targets)} targets for {len(coarse)} phrases")
    coarse_targets = [resize_target(t.to(x.device), x.shape) for x, t in zip(coarse, targets, strict=True)]
    terms = dict(zip(("loss_coarse_bce", "loss_coarse_dice"), bce_dice(coarse, coarse_targets), strict=True))
    if refined is not None:
        terms.update(zip(("loss_refined_bce", "loss_refined_dice"), bce_dice(refined, targets), strict=True))
    terms["loss"] = torch.stack(list(terms.values())).sum()
    return terms
