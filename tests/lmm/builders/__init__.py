"""Tiny offline instances of every LMM family for the conformance kit, one module per family.

Each module defines `BUILDERS: {name: folder -> TinyFamily}`: the real transformers classes at small sizes,
a locally trained word-level tokenizer holding the family's special tokens (`flmm.lmm.tiny.build_tokenizer`)
and the family's own torchvision-free image processor. Every module here is collected into `BUILDERS`, so
adding a family to the kit is one new module.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel, ProcessorMixin

# Decoder sizes every tiny family shares: grouped-query attention (4 heads, 2 kv heads), peaky random weights.
TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4,
        "num_key_value_heads": 2, "initializer_range": 0.2}  # fmt: skip
CORPUS = ["please give me a description of the image", "describe user assistant system what is this"]


@dataclass
class TinyFamily:
    """A family's tiny model and processor; `image_hw` is an image size for which an image region maps to
    cells exactly (one the processor keeps as it is, or any size for a processor that squashes)."""

    name: str
    model: PreTrainedModel
    processor: ProcessorMixin
    image_hw: tuple[int, int]
    # How the family's own processor encodes a prompt (its image placeholder unexpanded) followed by a text
    # to ground: (processor, images, prompt, text) -> its tensors. None: `processor(images=images,
    # text=[f"{prompt} {text}"])`. PaliGemma's processor takes such a text as `suffix` instead.
    processor_inputs: Callable[[ProcessorMixin, list, str, str], dict] | None = None


def text_config(tokenizer, model_type: str, **sizes) -> dict:
    """A decoder config dict of `TEXT`'s sizes (plus `sizes`) for `tokenizer`'s vocabulary and special ids."""
    return {
        **TEXT,
        "model_type": model_type,
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        **sizes,
    }


# A SigLIP-style vision tower at toy size (image_size and patch_size are each family's).
SIGLIP = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}


def token_ids(
    tokenizer, specials: dict[str, str], names: Sequence[str], suffix: str = "_id"
) -> dict[str, int]:
    """`{name + suffix: id}` of the special tokens `names` (keys of `specials`), as a family config takes
    them (`image_token_id=...`, Gemma's `image_token_index=...`)."""
    return {f"{name}{suffix}": tokenizer.convert_tokens_to_ids(specials[name]) for name in names}


def seeded(build: Callable[[], PreTrainedModel]) -> PreTrainedModel:
    """`build()` under seed 0 on a private RNG stream, in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build().eval()


def _collect() -> dict[str, Callable[[Path], TinyFamily]]:
    builders: dict[str, Callable[[Path], TinyFamily]] = {}
    for module in pkgutil.iter_modules(__path__):
        builders.update(importlib.import_module(f"{__name__}.{module.name}").BUILDERS)
    return builders


BUILDERS = _collect()
