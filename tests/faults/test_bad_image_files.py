"""Bad image files are a clear error naming the file and the problem, never a crash deep inside PIL or a
blocked read; valid images in odd modes load as the right RGB pixels; the catalogue of planted faults
(tests/faults/conftest.py) does what it says."""

from __future__ import annotations

import errno
import io
import os
import pickle
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flmm.data.datasets import RefCocoDataset
from flmm.data.image_io import load_rgb
from flmm.data.refcoco import load_refer_split
from flmm.data.synthetic import SyntheticConfig, generate_world
from flmm.errors import DataError
from tests.faults.conftest import KINDS, bomb_png, break_records

REFS = "coco/refcoco/refs(unc).p"


def _jpeg(path, hw=(12, 16)):
    rgb = np.random.default_rng(0).integers(0, 256, (*hw, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path, format="JPEG")
    return path


def _load_in_thread(path, expected_hw):
    """load_rgb in a thread, so that a loader that blocks (on a FIFO) fails the test instead of hanging."""
    outcome = {}

    def target():
        try:
            outcome["array"] = load_rgb(path, expected_hw)
        except DataError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive(), f"load_rgb blocked on {path}"
    return outcome


def _plant_corrupt(path):
    path.write_bytes(_jpeg(path).read_bytes()[:20] + b"\x00garbage" * 40)


def _plant_truncated_jpeg(path):
    path.write_bytes(_jpeg(path).read_bytes()[:300])


def _plant_truncated_png(path):
    rgb = np.random.default_rng(1).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "PNG")
    path.write_bytes(buffer.getvalue()[:300])


def _plant_fifo(path):
    os.mkfifo(path)


def _plant_broken_link(path):
    path.symlink_to(path.parent / "gone.jpg")


BROKEN_IMAGES = {
    "corrupt": (_plant_corrupt, "corrupt or truncated image"),
    "truncated-jpeg": (_plant_truncated_jpeg, "corrupt or truncated image"),
    "truncated-png": (_plant_truncated_png, "corrupt or truncated image"),
    "empty": (lambda p: p.write_bytes(b""), r"image file is empty \(0 bytes\)"),
    "bomb": (lambda p: p.write_bytes(bomb_png()), "decompression bomb.*900000000 pixels"),
    "missing": (lambda p: None, "image file not found"),
    "broken-link": (_plant_broken_link, r"not found \(a broken symbolic link\)"),
    "directory": (lambda p: p.mkdir(), "is a directory"),
    "fifo": (_plant_fifo, "not a regular file"),
    "other-size": (lambda p: _jpeg(p, (10, 10)), "image is 10x10 .*annotation says 12x16"),
}


@pytest.mark.parametrize("kind", BROKEN_IMAGES)
def test_broken_image_is_a_data_error_naming_the_file_and_the_problem(tmp_path, kind):
    plant, problem = BROKEN_IMAGES[kind]
    path = tmp_path / "COCO_train2014_000000000007.jpg"
    plant(path)
    outcome = _load_in_thread(path, (12, 16))
    assert "error" in outcome, f"{kind}: no DataError, got {outcome}"
    message = str(outcome["error"])
    assert message.startswith(f"{path}: ")
    assert re.search(problem, message), message


def test_an_unreadable_image_is_a_data_error_naming_the_permission(tmp_path, monkeypatch):
    path = tmp_path / "COCO_train2014_000000000007.jpg"
    _jpeg(path).chmod(0)
    # Root reads a file whatever its permission bits: refuse the open as the OS does for everyone else.
    real_open = Path.open

    def open_as_a_user(self, *args, **kwargs):
        if self == path:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", open_as_a_user)
    outcome = _load_in_thread(path, (12, 16))
    message = str(outcome["error"])
    assert message.startswith(f"{path}: ")
    assert re.search("cannot read the image file.*ermission denied", message), message


def _saved(tmp_path, img, fmt, **options):
    path = tmp_path / f"odd.{fmt.lower()}"
    img.save(path, format=fmt, **options)
    return path


GRAY = np.array([[0, 1, 127], [128, 254, 255]], dtype=np.uint8)


def _case_gray():
    return Image.fromarray(GRAY), "PNG", {}, np.repeat(GRAY[..., None], 3, -1)


def _case_gray_alpha():
    img = Image.merge("LA", [Image.fromarray(GRAY), Image.fromarray(255 - GRAY)])
    return img, "PNG", {}, np.repeat(GRAY[..., None], 3, -1)


def _case_palette_with_transparency():
    index = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    palette = np.array([[10, 20, 30], [200, 100, 0], [5, 250, 128]], dtype=np.uint8)
    img = Image.fromarray(index, "P")
    img.putpalette(palette.reshape(-1).tolist())
    return img, "PNG", {"transparency": 0}, palette[index]


def _case_rgba():
    rgba = np.random.default_rng(2).integers(0, 256, (2, 3, 4), dtype=np.uint8)
    return Image.fromarray(rgba, "RGBA"), "PNG", {}, rgba[..., :3]


def _case_cmyk_jpeg():
    # flat 8x8 blocks, so JPEG's loss stays a few levels
    rgb = np.zeros((16, 16, 3), dtype=np.uint8)
    rgb[:8, :8], rgb[:8, 8:], rgb[8:, :8], rgb[8:, 8:] = (
        (200, 30, 30),
        (30, 200, 30),
        (30, 30, 200),
        (250,) * 3,
    )
    return Image.fromarray(rgb).convert("CMYK"), "JPEG", {"quality": 100, "subsampling": 0}, rgb


def _case_one_bit():
    bits = GRAY > 127
    return Image.fromarray(bits), "PNG", {}, np.repeat(np.where(bits, 255, 0)[..., None], 3, -1)


def _case_gray16():
    values = np.array([[0, 0x00FF, 0x0100], [0x8000, 0xFEFF, 0xFFFF]], dtype=np.uint16)
    expected = np.array([[0, 0, 1], [128, 254, 255]], dtype=np.uint8)  # value >> 8, not clipped at 255
    return Image.fromarray(values), "PNG", {}, np.repeat(expected[..., None], 3, -1)


def _case_int32():
    values = np.array([[-5, 255, 256], [0x8000, 0xFFFF, 1 << 20]], dtype=np.int32)
    expected = np.array([[0, 0, 1], [128, 255, 255]], dtype=np.uint8)  # 16-bit range, clipped
    return Image.fromarray(values, "I"), "TIFF", {}, np.repeat(expected[..., None], 3, -1)


def _case_float():
    values = np.array([[0.0, 0.25, 1.0], [2.0, -1.0, np.nan]], dtype=np.float32)
    expected = np.array([[0, 64, 255], [255, 0, 0]], dtype=np.uint8)  # 0..1, clipped, NaN as 0
    return Image.fromarray(values, "F"), "TIFF", {}, np.repeat(expected[..., None], 3, -1)


ODD_IMAGES = {
    "L": _case_gray,
    "LA": _case_gray_alpha,
    "P": _case_palette_with_transparency,
    "RGBA": _case_rgba,
    "CMYK": _case_cmyk_jpeg,
    "1": _case_one_bit,
    "I;16": _case_gray16,
    "I": _case_int32,
    "F": _case_float,
}


@pytest.mark.parametrize("mode", ODD_IMAGES)
def test_valid_image_of_an_odd_mode_becomes_the_right_rgb_uint8(tmp_path, mode):
    img, fmt, options, expected = ODD_IMAGES[mode]()
    path = _saved(tmp_path, img, fmt, **options)
    with Image.open(path) as reopened:
        assert reopened.mode == mode  # the file really is in the mode under test
    array = load_rgb(path, expected_hw=expected.shape[:2])
    assert array.dtype == np.uint8 and array.shape == expected.shape
    tolerance = 6 if fmt == "JPEG" else 0
    assert np.abs(array.astype(int) - expected.astype(int)).max() <= tolerance


def test_unicode_file_name_loads_and_is_named_in_errors(tmp_path):
    good = _jpeg(tmp_path / "café 红色 🍎.jpg")
    assert load_rgb(good, (12, 16)).shape == (12, 16, 3)
    bad = tmp_path / "épave 坏 💥.jpg"
    bad.write_bytes(b"no image here")
    with pytest.raises(DataError) as info:
        load_rgb(bad)
    assert str(info.value).startswith(f"{bad}: corrupt or truncated image")


@pytest.fixture(scope="module")
def pristine_world(tmp_path_factory):
    """A 24-image synthetic world (about 18 refcoco:train images), generated once for the module."""
    root = tmp_path_factory.mktemp("world")
    generate_world(root, SyntheticConfig(seed=0, n_res_images=24, n_png_images=0, size=64, max_objects=3))
    return root


@pytest.fixture
def broken_world(pristine_world, tmp_path):
    root = tmp_path / "world"
    shutil.copytree(pristine_world, root)
    return root, break_records(root)


def test_catalogue_is_deterministic_and_breaks_distinct_files(pristine_world, broken_world, tmp_path):
    root, records = broken_world
    again = tmp_path / "again"
    shutil.copytree(pristine_world, again)
    assert [(r.kind, r.path.relative_to(root)) for r in records] == [
        (r.kind, r.path.relative_to(again)) for r in break_records(again)
    ]
    assert [r.kind for r in records] == list(KINDS)
    assert len({r.path for r in records}) == len({r.image_id for r in records}) == len(KINDS)
    assert all(r.affects["refcoco:train"] >= len(r.ref_ids) >= 1 for r in records)


def test_catalogue_outcomes_are_what_the_loader_does(pristine_world, broken_world):
    root, records = broken_world
    for record in records:
        original = load_rgb(pristine_world / record.path.relative_to(root), record.hw)
        if record.outcome == "skip":
            with pytest.raises(DataError) as info:
                load_rgb(record.path, record.hw)
            assert str(info.value).startswith(f"{record.path}: "), record.kind
            continue
        array = load_rgb(record.path, record.hw)
        gray = np.asarray(Image.fromarray(original).convert("L"))
        if record.kind == "gray16":  # loaded right, its top byte is exactly the 8-bit gray
            assert np.array_equal(array, np.repeat(gray[..., None], 3, -1))
        reference = gray[..., None] if record.kind in ("grayscale", "gray16") else original
        assert np.abs(array.astype(int) - reference).mean() < 12, record.kind


def test_training_over_the_broken_world_skips_the_broken_images_and_keeps_the_odd_ones(broken_world):
    root, records = broken_world
    dataset = RefCocoDataset(root, "refcoco", "train", protocol="train", max_skip_fraction=1.0)
    seen = {dataset[i]["image_id"] for i in range(len(dataset))}
    pristine_images = len(load_refer_split(root, "refcoco", "train").objects_by_image())
    assert len(dataset) == pristine_images - sum(r.stage == "build" for r in records)
    assert not seen & {r.image_id for r in records if r.outcome == "skip"}
    assert seen >= {r.image_id for r in records if r.outcome == "loads"}


def test_catalogue_on_the_fixture_lists_the_other_splits_an_image_serves(writable_real_format):
    kinds = ["corrupt", "missing", "gray16"]
    records = break_records(writable_real_format, kinds)
    refs = pickle.loads((writable_real_format / REFS).read_bytes())
    for record in records:
        val = sum(
            len(r["sentences"]) for r in refs if r["image_id"] == record.image_id and r["split"] == "val"
        )
        assert record.affects.get("refcoco:val", 0) == val
        assert set(record.affects) > {"refcoco:train", "refcoco+:train", "refcocog:train"}
    with pytest.raises(ValueError, match="refcoco:train has 8 distinct image files; 11 kinds and 1 intact"):
        break_records(writable_real_format, list(KINDS))
