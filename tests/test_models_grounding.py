"""GroundingModel on random adapter-like tensors: head + refiner joined, built from a registry config."""

import torch

from flmm.models import GroundingModel, grounding_losses
from flmm.registry import MODELS

PAD_METAS = [
    dict(
        orig_h=48, orig_w=64, resized_h=84, resized_w=112, pad_top=14, pad_bottom=14, pad_left=0, pad_right=0
    ),
    dict(
        orig_h=90, orig_w=45, resized_h=112, resized_w=56, pad_top=0, pad_bottom=0, pad_left=28, pad_right=28
    ),
]
LAYERS, HEADS, HIDDEN = 2, 3, 16


def make_inputs():
    generator = torch.Generator().manual_seed(0)
    image_index = torch.tensor([0, 1, 1])
    attention = torch.rand(3, LAYERS * HEADS, 8, 8, generator=generator)
    hidden = torch.randn(3, 4, LAYERS, HIDDEN, generator=generator)
    hidden_mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    images = [torch.randint(0, 256, (3, m["orig_h"], m["orig_w"]), dtype=torch.uint8) for m in PAD_METAS]
    targets = [torch.rand(images[b].shape[1:], generator=generator) > 0.5 for b in image_index.tolist()]
    return attention, image_index, images, hidden, hidden_mask, targets


def build(with_refiner: bool) -> GroundingModel:
    torch.manual_seed(0)
    refiner = dict(type="SamRefiner", hidden_size=HIDDEN, num_layers=LAYERS, model_type="tiny")
    return MODELS.build(
        dict(
            type="GroundingModel",
            mask_head=dict(type="UNetMaskHead", in_channels=LAYERS * HEADS, channels=[8, 16, 32], size=32),
            refiner=refiner if with_refiner else None,
        )
    )


def test_outputs_have_the_square_content_and_original_sizes():
    model = build(with_refiner=True)
    attention, image_index, images, hidden, hidden_mask, _ = make_inputs()
    out = model(attention, image_index, PAD_METAS, images, hidden, hidden_mask)
    assert out.coarse_square.shape == (3, 32, 32)
    assert [tuple(c.shape) for c in out.coarse] == [(24, 32), (32, 16), (32, 16)]
    assert [tuple(m.shape) for m in out.refined] == [(48, 64), (90, 45), (90, 45)]
    assert out.predictions is out.refined


def test_refined_loss_alone_trains_the_mask_head_through_the_dense_prompt():
    model = build(with_refiner=True)
    attention, image_index, images, hidden, hidden_mask, targets = make_inputs()
    out = model(attention, image_index, PAD_METAS, images, hidden, hidden_mask)
    grounding_losses(out.coarse, out.refined, targets)["loss_refined_bce"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.mask_head.parameters())


def test_without_refiner_predictions_are_coarse_maps_at_the_original_size():
    model = build(with_refiner=False)
    attention, image_index, *_ = make_inputs()
    out = model(attention, image_index, PAD_METAS)
    assert out.refined is None and out.refiner is None
    assert [tuple(m.shape) for m in out.predictions] == [(48, 64), (90, 45), (90, 45)]
