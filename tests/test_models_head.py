"""U-Net mask head: shapes, size of the reference configuration, input normalisation, pad cropping."""

import pytest
import torch

from flmm.models.mask_head import UNetMaskHead, content_window, crop_padding, normalize_attention
from flmm.registry import MODELS

# A 640x480 (w x h) image in LLaVA's 336 pad mode: resized to 336x252, 42 px of padding above and below.
LANDSCAPE = dict(
    orig_h=480, orig_w=640, resized_h=252, resized_w=336, pad_top=42, pad_bottom=42, pad_left=0, pad_right=0
)
# A 300x600 (w x h) image: resized to 168x336, 84 px of padding left and right.
PORTRAIT = dict(
    orig_h=600, orig_w=300, resized_h=336, resized_w=168, pad_top=0, pad_bottom=0, pad_left=84, pad_right=84
)


def test_output_is_one_square_logit_map_per_phrase():
    head = UNetMaskHead(in_channels=12, channels=(8, 16, 32, 64))
    assert head(torch.rand(3, 12, 24, 24)).shape == (3, 64, 64)


def test_output_size_is_configurable_and_grid_may_be_rectangular():
    head = UNetMaskHead(in_channels=6, channels=(4, 8, 16), size=32)
    assert head(torch.rand(2, 6, 12, 20)).shape == (2, 32, 32)


def test_reference_configuration_has_about_7_8_million_parameters():
    head = UNetMaskHead(in_channels=1024)
    count = sum(p.numel() for p in head.parameters())
    print(f"UNetMaskHead(in_channels=1024) parameters: {count}")
    assert 7.6e6 < count < 7.9e6


def test_each_channel_is_normalised_to_sum_one_and_empty_maps_stay_zero():
    attention = torch.rand(2, 5, 6, 6) * 0.01
    attention[1, 3] = 0
    normalised = normalize_attention(attention)
    sums = normalised.sum(dim=(-2, -1))
    expected = torch.ones(2, 5)
    expected[1, 3] = 0
    torch.testing.assert_close(sums, expected)


def test_head_output_does_not_depend_on_the_scale_of_each_channel():
    head = UNetMaskHead(in_channels=4, channels=(4, 8))
    attention = torch.rand(1, 4, 8, 8)
    scale = torch.tensor([0.1, 2.0, 0.5, 7.0]).view(1, 4, 1, 1)
    torch.testing.assert_close(head(attention), head(attention * scale), rtol=1e-4, atol=1e-4)


def test_size_not_divisible_by_the_stage_strides_is_rejected():
    with pytest.raises(ValueError, match="divisible"):
        UNetMaskHead(in_channels=4, channels=(4, 8, 16, 32), size=60)


def test_wrong_number_of_attention_channels_is_rejected():
    head = UNetMaskHead(in_channels=4, channels=(4, 8))
    with pytest.raises(ValueError, match=r"\(P, 4, gh, gw\)"):
        head(torch.rand(1, 5, 8, 8))


def test_content_window_scales_the_pad_meta_to_the_map():
    assert content_window(LANDSCAPE, 64) == (8, 0, 48, 64)
    assert content_window(PORTRAIT, 64) == (0, 16, 64, 32)


def test_crop_removes_exactly_the_pad_region():
    square = torch.full((3, 64, 64), -10.0)
    square[0, 8:56, :] = 5.0
    square[1, :, 16:48] = 6.0
    square[2, 8:56, :] = 7.0
    crops = crop_padding(square, torch.tensor([0, 1, 0]), [LANDSCAPE, PORTRAIT])
    assert [tuple(c.shape) for c in crops] == [(48, 64), (64, 32), (48, 64)]
    for crop, value in zip(crops, (5.0, 6.0, 7.0), strict=True):
        assert torch.all(crop == value)


def test_crop_can_resize_to_the_original_image_size():
    square = torch.zeros(2, 64, 64, requires_grad=True)
    crops = crop_padding(square, torch.tensor([1, 0]), [LANDSCAPE, PORTRAIT], resize_to_original=True)
    assert [tuple(c.shape) for c in crops] == [(600, 300), (480, 640)]
    sum(c.sum() for c in crops).backward()
    assert square.grad[0, :, 16:48].abs().sum() > 0
    assert square.grad[0, :, :16].abs().sum() == 0


def test_crop_rejects_missing_meta_fields_and_unknown_images():
    square = torch.zeros(1, 64, 64)
    with pytest.raises(KeyError, match="pad_top"):
        crop_padding(square, torch.tensor([0]), [{"orig_h": 1}])
    with pytest.raises(ValueError, match="image index"):
        crop_padding(square, torch.tensor([1]), [LANDSCAPE])


def test_head_builds_from_a_registry_config():
    head = MODELS.build(dict(type="UNetMaskHead", in_channels=6, channels=[4, 8], size=16))
    assert isinstance(head, UNetMaskHead)
    assert head(torch.rand(1, 6, 4, 4)).shape == (1, 16, 16)
