"""LLaVA "pad" preprocessing: longest side to the LMM's size, centred on the mean colour, with meta data."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from flmm.data.image_io import load_rgb
from flmm.data.transforms import CLIP_MEAN, CLIP_STD, LlavaPadTransform, LMMInputs, ProcessorTransform
from tests.conftest import REPO_ROOT


def _unnormalise(pixel_values: torch.Tensor) -> np.ndarray:
    mean = torch.tensor(CLIP_MEAN)[:, None, None]
    std = torch.tensor(CLIP_STD)[:, None, None]
    return ((pixel_values * std + mean) * 255).round().permute(1, 2, 0).numpy()


def test_wide_image_is_resized_to_the_width_and_padded_evenly_top_and_bottom():
    image = np.full((50, 100, 3), 200, dtype=np.uint8)
    out = LlavaPadTransform(size=40)(image)
    meta = out["pad_meta"]
    assert (meta["resized_h"], meta["resized_w"]) == (20, 40)
    assert (meta["pad_top"], meta["pad_bottom"], meta["pad_left"], meta["pad_right"]) == (10, 10, 0, 0)
    pixels = _unnormalise(out["pixel_values"])
    assert out["pixel_values"].shape == (3, 40, 40)
    np.testing.assert_allclose(pixels[10:30, :, 0], 200, atol=1)
    np.testing.assert_allclose(
        pixels[:10, :, :], np.broadcast_to(np.round(255 * np.array(CLIP_MEAN)), (10, 40, 3)), atol=1
    )


def test_odd_padding_puts_the_smaller_half_before():
    out = LlavaPadTransform(size=10)(np.zeros((10, 7, 3), dtype=np.uint8))
    meta = out["pad_meta"]
    assert (meta["pad_left"], meta["pad_right"]) == (1, 2)
    assert meta["pad_left"] + meta["resized_w"] + meta["pad_right"] == 10


def test_meta_locates_content_for_mask_crop_back():
    image = np.zeros((30, 90, 3), dtype=np.uint8)
    image[:, :45] = 255
    out = LlavaPadTransform(size=60)(image)
    m = out["pad_meta"]
    content = _unnormalise(out["pixel_values"])[
        m["pad_top"] : m["pad_top"] + m["resized_h"], m["pad_left"] : m["pad_left"] + m["resized_w"]
    ]
    assert content.shape[:2] == (20, 60)
    assert content[:, :28].min() > 240 and content[:, 32:].max() < 15


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_any_image_mode_is_read_as_rgb(tmp_path, mode):
    path = tmp_path / f"x.{'png' if mode != 'CMYK' else 'jpg'}"
    Image.new(mode, (7, 5)).save(path)
    array = load_rgb(path, expected_hw=(5, 7))
    assert array.shape == (5, 7, 3) and array.dtype == np.uint8


def test_processor_transform_returns_the_processor_tensors_without_batch_dim():
    class FakeAnyResProcessor:
        def __call__(self, images, return_tensors):
            return {
                "pixel_values": torch.zeros(1, 5, 3, 8, 8),
                "image_sizes": torch.tensor([[images.shape[0], images.shape[1]]]),
            }

    out = ProcessorTransform(FakeAnyResProcessor())(np.zeros((12, 20, 3), dtype=np.uint8))
    assert out["pixel_values"].shape == (5, 3, 8, 8)
    assert out["image_sizes"].tolist() == [12, 20]
    assert (out["pad_meta"]["orig_h"], out["pad_meta"]["orig_w"]) == (12, 20)


def test_processor_transform_keeps_unbatched_outputs_whole():
    class FakeNativeResolutionProcessor:  # Qwen2-VL: patches of the image, no batch dimension
        def __call__(self, images, return_tensors):
            return {"pixel_values": torch.zeros(24, 1176), "image_grid_thw": torch.tensor([[1, 4, 6]])}

    transform = ProcessorTransform(FakeNativeResolutionProcessor(), batched_keys=())
    out = LMMInputs(transform)(np.zeros((12, 20, 3), dtype=np.uint8))
    assert out["lmm_image"]["pixel_values"].shape == (24, 1176)
    assert out["lmm_image"]["image_grid_thw"].tolist() == [[1, 4, 6]]
    assert set(out) == {"lmm_image", "pad_meta"}


def test_any_res_images_of_different_shapes_batch_through_the_llava_next_adapter(tmp_path):
    from flmm.data.collate import collate_grounding
    from flmm.lmm import LlavaNextAdapter
    from flmm.lmm.tiny import build_tiny_llava_next

    adapter = LlavaNextAdapter(build_tiny_llava_next(tmp_path / "next"))
    transform = adapter.image_transform()
    samples = []
    for h, w in ((40, 70), (70, 40), (50, 50)):
        image = np.zeros((h, w, 3), dtype=np.uint8)
        sample = {"image": image, "masks": torch.zeros(1, h, w, dtype=torch.bool)}
        sample.update(transform(sample["image"]))
        samples.append(sample)
    batch = collate_grounding(samples)
    inputs = adapter.vision_inputs(batch["lmm_image"])
    crops = [s["lmm_image"]["pixel_values"].shape[0] for s in samples]
    assert inputs["pixel_values"].shape[:2] == (3, max(crops))
    assert inputs["image_sizes"].tolist() == [[40, 70], [70, 40], [50, 50]]


def test_importing_the_transforms_switches_off_albumentations_update_check():
    # A fresh interpreter: this one has imported albumentations already, and the variable with it.
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    code = "import os, flmm.data.transforms; print(os.environ['NO_ALBUMENTATIONS_UPDATE'])"
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "1"
