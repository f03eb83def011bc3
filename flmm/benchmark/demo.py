"""The `demo` suite: a question's latency in the demo, split into generate, grounding and SAM, with the
answer's features recorded during generation and with the prefill over prompt + answer after it.

Runs the embedded default's config in attend-and-segment mode (its shipped tiny LLaVA and SAM; no
checkpoint needed) on one image. `plain generate` is the LMM answering alone (`generate_answer`), the
baseline of the ratio; SAM's image embedding is computed for the first question on an image and kept.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from flmm.demo.answer import GenerationSettings, generate_answer
from flmm.demo.pipeline import Demo

QUESTION = "what is the red object?"


def _timed(calls: dict[str, float], name: str, function):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            calls[name] += time.perf_counter() - start

    return wrapper


def demo_rows(config: Path, max_new_tokens: int = 32, repeats: int = 5) -> list[dict]:
    """Rows {"path", "seconds", "generate_s", "grounding_s", "sam_s"}: means over `repeats` questions on
    new images (so SAM runs every time), for plain generate and both grounding paths."""
    rows = []
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (128, 128, 3), dtype=np.uint8) for _ in range(repeats + 1)]
    for path, during in (("decode grounding", True), ("prefill grounding", False), ("plain generate", None)):
        demo = Demo.from_config(config, device="cpu", ground_during_generation=bool(during))
        calls: dict[str, float] = defaultdict(float)
        lmm, refiner = demo.adapter.lmm, demo.refiner
        lmm.generate = _timed(calls, "generate", lmm.generate)
        demo.adapter.forward = _timed(calls, "grounding", demo.adapter.forward)
        refiner.encode_images = _timed(calls, "sam", refiner.encode_images)

        def ask(image, demo=demo, plain=during is None):
            if plain:
                prepared = demo.prepare(image)
                return generate_answer(
                    demo.adapter, prepared.lmm_image, demo.adapter.prompt(QUESTION), settings
                )
            return demo.run(image, QUESTION, settings=settings)

        with torch.no_grad():
            ask(images[-1])  # warm-up
            calls.clear()
            start = time.perf_counter()
            for image in images[:repeats]:
                ask(image)
            total = (time.perf_counter() - start) / repeats
        rows.append(
            {
                "path": path,
                "seconds": total,
                "generate_s": calls["generate"] / repeats,
                "grounding_s": calls["grounding"] / repeats,
                "sam_s": calls["sam"] / repeats,
            }
        )
    return rows
