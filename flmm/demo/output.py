"""What a demo run shows and writes: the marked answer, overlay.png, result.json.

OUT/overlay.png   the image, one colour per phrase (mask tinted and outlined, box), legend below
OUT/result.json   {"question", "answer", "prompt", "text", "source", "mode", "image_size": [H, W],
                   "phrases": [{"index", "text", "span": [start, end] (into "text"), "in_answer",
                                "box": [x0, y0, x1, y1] | null, "score", "color": [r, g, b],
                                "mask": {"size": [H, W], "counts": COCO RLE string}}],
                   "marked": {"plain", "kosmos", "glamm"}}
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from flmm.data.overlay import PALETTE, draw_overlay
from flmm.demo.phrases import TEXT_FORMATS, marked_text
from flmm.demo.pipeline import DemoResult
from flmm.masks import mask_rle


def format_answer(result: DemoResult, style: str = "plain") -> str:
    """The grounded text with its phrases marked in `style` (see `flmm.demo.phrases`); when the phrases
    were grounded outside the answer, the answer as it is, then the marked phrases."""
    marked = marked_text(
        result.text, [p.span for p in result.phrases], [p.box for p in result.phrases], style
    )
    if result.answer is None or result.text == result.answer:
        return marked
    return f"{result.answer}\n(grounded: {marked})"


def render_overlay(result: DemoResult, image: np.ndarray) -> Image.Image:
    """The overlay: phrase i in `PALETTE[i]`, its box, and a legend `[i] phrase (score)`."""
    if not result.phrases:
        return draw_overlay(image, [], [f"nothing grounded ({result.source})"])
    boxes = [
        [0, 0, 0, 0] if p.box is None else [p.box[0], p.box[1], p.box[2] - p.box[0], p.box[3] - p.box[1]]
        for p in result.phrases
    ]
    captions = [f"{p.text} ({p.score:.2f})" for p in result.phrases]
    return draw_overlay(image, [p.mask for p in result.phrases], captions, boxes=boxes)


def result_dict(result: DemoResult) -> dict:
    """result.json's content (fields in the module docstring)."""
    return {
        "question": result.question,
        "answer": result.answer,
        "prompt": result.prompt,
        "text": result.text,
        "source": result.source,
        "mode": result.mode,
        "image_size": list(result.image_size),
        "attend": result.attend,
        "phrases": [
            {
                "index": i,
                "text": p.text,
                "span": list(p.span),
                "in_answer": p.in_answer,
                "box": p.box,
                "score": round(float(p.score), 6),
                "color": list(PALETTE[i % len(PALETTE)]),
                "mask": mask_rle(p.mask),
            }
            for i, p in enumerate(result.phrases)
        ],
        "marked": {style: format_answer(result, style) for style in TEXT_FORMATS},
    }


def write_outputs(result: DemoResult, image: np.ndarray, out_dir: str | Path) -> tuple[Path, Path]:
    """Write overlay.png and result.json into `out_dir`; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    overlay, data = out / "overlay.png", out / "result.json"
    render_overlay(result, image).save(overlay)
    data.write_text(json.dumps(result_dict(result), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return overlay, data
