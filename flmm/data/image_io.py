"""Read images as RGB uint8 arrays, whatever their mode, with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from flmm.errors import DataError


def load_rgb(path: str | Path, expected_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Return the image at `path` as a `(H, W, 3)` uint8 array.

    Grayscale, palette, CMYK and RGBA images become RGB (alpha is dropped, as LLaVA's processor does).
    `expected_hw` is the (height, width) the annotation file records; a mismatch means masks would not
    line up with the pixels, so it is an error rather than a silent resize.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file not found")
    try:
        with Image.open(path) as img:
            img.load()
            rgb = img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: corrupt or truncated image ({exc})") from exc
    array = np.array(rgb, dtype=np.uint8)
    if expected_hw is not None and tuple(array.shape[:2]) != tuple(expected_hw):
        raise DataError(
            f"{path}: image is {array.shape[0]}x{array.shape[1]} (HxW) but its annotation says "
            f"{expected_hw[0]}x{expected_hw[1]}"
        )
    return array
