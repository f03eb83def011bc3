"""Draw a mask, its box and its expression over an image, for people to check data and predictions."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PALETTE = (
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def _wrap(text: str, draw: ImageDraw.ImageDraw, font, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if line and draw.textlength(candidate, font=font) > width:
            lines.append(line)
            line = word
        else:
            line = candidate
    return [*lines, line] if line else lines


def draw_overlay(
    image: np.ndarray,
    masks: list[np.ndarray],
    captions: list[str],
    boxes: list[list[float]] | None = None,
    outlines: list[np.ndarray] | None = None,
    min_width: int = 384,
) -> Image.Image:
    """Render masks over an image with one colour each and a caption band below.

    image: `(H, W, 3)` uint8; masks: `(H, W)` bool each, outlined (tinted when several), the rest dimmed;
    boxes: `[x, y, w, h]` in original pixels; outlines: `(H, W)` bool masks drawn as contours only (e.g.
    ground truth under a prediction). Small images are enlarged (nearest neighbour) to `min_width` so
    that they can be read.
    """
    h, w = image.shape[:2]
    scale = max(1, int(np.ceil(min_width / w)))
    canvas = image.astype(np.float32).copy()
    if masks:
        # Dim what is outside every mask so the referred region stands out whatever its colour.
        canvas[~np.logical_or.reduce(masks)] *= 0.4
    for i, mask in enumerate(masks):
        colour = np.array(PALETTE[i % len(PALETTE)], dtype=np.float32)
        if len(masks) > 1:
            # Several masks need a tint to tell them apart; a single one keeps the true colours of its pixels.
            canvas[mask] = 0.55 * canvas[mask] + 0.45 * colour
        canvas[mask & ~_erode(mask)] = colour
    for mask in outlines or []:
        edge = mask & ~_erode(mask)
        canvas[edge] = (255, 255, 255)
    big = Image.fromarray(canvas.astype(np.uint8)).resize((w * scale, h * scale), Image.NEAREST)
    draw = ImageDraw.Draw(big)
    for i, box in enumerate(boxes or []):
        x, y, bw, bh = (v * scale for v in box)
        if bw > 0 and bh > 0:
            draw.rectangle([x, y, x + bw - 1, y + bh - 1], outline=PALETTE[i % len(PALETTE)], width=2)
    font = _font(16)
    lines = [ln for i, cap in enumerate(captions) for ln in _wrap(f"[{i}] {cap}", draw, font, big.width - 12)]
    band = Image.new("RGB", (big.width, 8 + 20 * len(lines)), (20, 20, 20))
    band_draw = ImageDraw.Draw(band)
    caption_index = 0
    for row, line in enumerate(lines):
        if line.startswith("[") and line[1 : line.find("]")].isdigit():
            caption_index = int(line[1 : line.find("]")])
        band_draw.text((6, 4 + 20 * row), line, fill=PALETTE[caption_index % len(PALETTE)], font=font)
    out = Image.new("RGB", (big.width, big.height + band.height))
    out.paste(big, (0, 0))
    out.paste(band, (0, big.height))
    return out


def _erode(mask: np.ndarray) -> np.ndarray:
    padded = np.pad(mask, 1, constant_values=False)
    return padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
