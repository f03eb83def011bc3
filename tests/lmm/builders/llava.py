"""LLaVA-1.5 and LLaVA-NeXT: saved with `save_pretrained` and loaded back, as real checkpoints are."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoModelForImageTextToText, AutoProcessor

from flmm.lmm.tiny import build_tiny_llava, build_tiny_llava_next
from tests.lmm.builders import CORPUS, TEXT, TinyFamily


def _from_folder(name: str, folder: Path) -> TinyFamily:
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    return TinyFamily(name, model, AutoProcessor.from_pretrained(folder), (32, 32))


BUILDERS = {
    "llava": lambda folder: _from_folder(
        "llava", build_tiny_llava(folder, config={"text": TEXT}, corpus=CORPUS)
    ),
    "llava_next": lambda folder: _from_folder(
        "llava_next", build_tiny_llava_next(folder, config={"text": TEXT}, corpus=CORPUS)
    ),
}
