"""Loss terms of DESIGN §1.8 on hand-computed cases."""

import math

import pytest
import torch

from flmm.models.losses import bce_dice, dice_loss, grounding_losses, resize_target


def test_perfect_prediction_has_near_zero_bce_and_dice():
    target = torch.zeros(6, 8)
    target[1:4, 2:7] = 1
    logits = (target * 2 - 1) * 30
    bce, dice = bce_dice([logits], [target])
    assert bce < 1e-6
    assert dice < 1e-6


def test_uncertain_prediction_has_the_hand_computed_values():
    target = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    bce, dice = bce_dice([torch.zeros(2, 2)], [target])
    torch.testing.assert_close(bce, torch.tensor(math.log(2)))
    # p = 0.5 everywhere: 1 - (2 * 0.5 + 1) / (4 * 0.5 + 1 + 1)
    torch.testing.assert_close(dice, torch.tensor(0.5))


def test_dice_epsilon_is_one_so_an_empty_target_and_prediction_cost_nothing():
    assert dice_loss(torch.full((3, 3), -50.0), torch.zeros(3, 3)) < 1e-6
    torch.testing.assert_close(dice_loss(torch.full((1, 1), 50.0), torch.zeros(1, 1)), torch.tensor(0.5))


def test_every_phrase_weighs_the_same_whatever_its_size():
    small_wrong = (torch.zeros(1, 1), torch.ones(1, 1))  # bce = ln 2
    large_right = (torch.full((20, 20), -30.0), torch.zeros(20, 20))  # bce ~ 0
    bce, _ = bce_dice([small_wrong[0], large_right[0]], [small_wrong[1], large_right[1]])
    torch.testing.assert_close(bce, torch.tensor(math.log(2) / 2), atol=1e-6, rtol=0)


def test_coarse_target_is_the_area_fraction_thresholded_at_one_half():
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[0:2, 0:2] = True  # top-left cell full
    mask[0, 2:4] = True  # top-right cell half full
    mask[3, 0] = True  # bottom-left cell a quarter full
    torch.testing.assert_close(resize_target(mask, (2, 2)), torch.tensor([[1.0, 1.0], [0.0, 0.0]]))


def test_grounding_losses_returns_four_terms_and_their_sum():
    target = torch.zeros(8, 12, dtype=torch.bool)
    target[:, :6] = True
    coarse = torch.zeros(4, 6, requires_grad=True)
    refined = torch.zeros(8, 12, requires_grad=True)
    terms = grounding_losses([coarse], [refined], [target])
    names = {"loss_coarse_bce", "loss_coarse_dice", "loss_refined_bce", "loss_refined_dice"}
    assert set(terms) == names | {"loss"}
    torch.testing.assert_close(terms["loss"], sum(terms[n] for n in names))
    torch.testing.assert_close(terms["loss_coarse_bce"], torch.tensor(math.log(2)))
    terms["loss"].backward()
    assert coarse.grad.abs().sum() > 0 and refined.grad.abs().sum() > 0


def test_without_refined_masks_only_the_coarse_terms_count():
    terms = grounding_losses([torch.zeros(2, 2)], None, [torch.ones(4, 4)])
    assert set(terms) == {"loss_coarse_bce", "loss_coarse_dice", "loss"}


def test_mismatched_shapes_and_counts_are_rejected():
    with pytest.raises(ValueError, match="phrase 0"):
        bce_dice([torch.zeros(2, 2)], [torch.zeros(3, 3)])
    with pytest.raises(ValueError, match="targets"):
        grounding_losses([torch.zeros(2, 2)], None, [])
