"""Read images as RGB uint8 arrays, whatever their mode, with errors that name the file and the problem.

Everything that can be wrong with an image file on disk (missing, a directory or FIFO, unreadable, empty,
corrupt, truncated, a decompression bomb, another size than annotated) is a `DataError` raised before or
while decoding, never an exception from deep inside PIL; a dataset turns it into a counted skip.
"""

from __future__ import annotations

import stat
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from flmm.errors import DataError

# What PIL's decoders raise on bad bytes (UnidentifiedImageError is an OSError). Found by truncating and
# bit-flipping JPEG, PNG, GIF, BMP, TIFF and WebP files: OSError nearly always, the others now and then.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)


def check_image_file(path: Path) -> None:
    """Raise DataError unless `path` is a non-empty regular file.

    Checked with stat before opening: opening a FIFO would block the data worker forever.
    """
    try:
        info = path.stat()
    except FileNotFoundError:
        broken_link = " (a broken symbolic link)" if path.is_symlink() else ""
        raise DataError(f"{path}: image file not found{broken_link}") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read the image file ({exc.strerror or exc})") from exc
    if stat.S_ISDIR(info.st_mode):
        raise DataError(f"{path}: is a directory, not an image file")
    if not stat.S_ISREG(info.st_mode):
        raise DataError(f"{path}: is not a regular file (a FIFO, socket or device), not an image file")
    if info.st_size == 0:
        raise DataError(f"{path}: image file is empty (0 bytes)")


def read_image(path: str | Path, expected_hw: tuple[int, int] | None = None) -> Image.Image:
    """Open, check and fully decode the image at `path`; the returned image holds no open file.

    `expected_hw` is the (height, width) the annotation file records. It is compared with the size in the
    file's header before the pixels are decoded, so a mislabelled huge image costs nothing; a mismatch means
    masks would not line up with the pixels, so it is an error rather than a silent resize.
    """
    path = Path(path)
    check_image_file(path)
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise DataError(f"{path}: cannot read the image file ({exc.strerror or exc})") from exc
    with handle:
        try:
            with Image.open(handle) as img:
                _check_size(path, img.size, expected_hw)
                img.load()
                # load() decodes the first frame; copy() detaches it from the file closed below
                return img.copy()
        except Image.DecompressionBombError as exc:
            raise DataError(f"{path}: refused, a possible decompression bomb ({exc})") from exc
        except UnidentifiedImageError as exc:
            # PIL's own message names the file handle, not the file
            raise DataError(
                f"{path}: corrupt or truncated image (not in a format PIL knows, or its header is broken)"
            ) from exc
        except _DECODE_ERRORS as exc:
            raise DataError(f"{path}: corrupt or truncated image ({type(exc).__name__}: {exc})") from exc


def _check_size(path: Path, width_height: tuple[int, int], expected_hw: tuple[int, int] | None) -> None:
    width, height = width_height
    if expected_hw is not None and (height, width) != tuple(expected_hw):
        raise DataError(
            f"{path}: image is {height}x{width} (HxW) but its annotation says "
            f"{expected_hw[0]}x{expected_hw[1]}"
        )


def to_rgb(img: Image.Image, path: str | Path) -> np.ndarray:
    """Convert a decoded image of any mode to a `(H, W, 3)` uint8 array.

    Grayscale, palette, CMYK, 1-bit and alpha modes go through PIL's `convert("RGB")` (alpha is dropped, as
    LLaVA's processor does). The wide grayscale modes are scaled here, because PIL's convert clips them at
    255 instead: `I;16*` (16-bit) and `I` (32-bit int, which PIL also uses for 16-bit data) keep their top 8
    of 16 bits; `F` (float) is read as 0..1, the convention of float images.
    """
    if img.mode.startswith("I;16"):
        gray = (np.asarray(img).astype(np.uint16) >> 8).astype(np.uint8)
    elif img.mode == "I":
        gray = (np.clip(np.asarray(img), 0, 65535) >> 8).astype(np.uint8)
    elif img.mode == "F":
        unit = np.clip(np.nan_to_num(np.asarray(img), nan=0.0), 0.0, 1.0)
        gray = np.round(unit * 255).astype(np.uint8)
    else:
        try:
            return np.array(img.convert("RGB"), dtype=np.uint8)
        except ValueError as exc:
            raise DataError(f"{path}: cannot convert an image of mode {img.mode} to RGB ({exc})") from exc
    return np.repeat(gray[..., None], 3, axis=-1)


def load_rgb(path: str | Path, expected_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Return the image at `path` as a `(H, W, 3)` uint8 array (see `read_image` and `to_rgb`)."""
    return to_rgb(read_image(path, expected_hw), path)
