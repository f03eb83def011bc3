"""Tiny LLaVA / LLaVA-NeXT checkpoints built from configs, for tests and toy pre-training (no download).

`build_tiny_llava(out_dir)` and `build_tiny_llava_next(out_dir)` construct a randomly initialised
`LlavaForConditionalGeneration` / `LlavaNextForConditionalGeneration` (small CLIP vision tower, small Llama
decoder with grouped-query attention), a word-level tokenizer trained locally with `tokenizers`, a
torchvision-free image processor and the matching processor, and save all of it with `save_pretrained`
(safetensors). The folder then loads offline with `from_pretrained` exactly like a hub checkpoint.

Sizes come from a plain nested dict (YAML-able), merged over `TINY_LLAVA_DEFAULTS`:

    {"vision": {...CLIPVisionConfig kwargs}, "text": {...LlamaConfig kwargs},
     "image_grid_pinpoints": [[h, w], ...]}   # the last key is used by LLaVA-NeXT only
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaImageProcessorPil,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from flmm.errors import ConfigError
from flmm.lmm.text import DEFAULT_PROMPT_TEMPLATE

IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", IMAGE_TOKEN]

TINY_LLAVA_DEFAULTS: dict[str, Any] = {
    "vision": {
        "image_size": 32,
        "patch_size": 8,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
    },
    "text": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        # Ten times transformers' default: random tiny decoders then attend peakily, not near-uniformly,
        # which makes attention tests discriminative.
        "initializer_range": 0.2,
    },
    "image_grid_pinpoints": [[32, 64], [64, 32], [64, 64]],
}

# Words every tiny vocabulary holds, so prompts and typical test captions are not all <unk>.
BASE_CORPUS = [
    DEFAULT_PROMPT_TEMPLATE,
    "a an the of on in with and to is are at by from left right top bottom front back middle near",
    "man woman person people child boy girl dog cat horse bird car bus truck bike tree sky grass road",
    "red green blue white black yellow brown big small large tall short two three one sitting standing",
    "table chair shirt hat ball water building window door street field picture photo",
]


def _merged(config: Mapping[str, Any] | None) -> dict[str, Any]:
    merged = copy.deepcopy(TINY_LLAVA_DEFAULTS)
    for key, value in (config or {}).items():
        if key not in merged:
            raise ConfigError(f"tiny LMM config: unknown key {key!r}; expected one of {sorted(merged)}")
        if isinstance(value, Mapping):
            merged[key].update(value)
        else:
            merged[key] = value
    return merged


def build_tokenizer(
    corpus: Iterable[str] = (), extra_specials: Mapping[str, str] | None = None
) -> PreTrainedTokenizerFast:
    """A lower-casing word-level fast tokenizer trained on `BASE_CORPUS` + `corpus`; prepends `<s>`.

    Holds `<unk> <s> </s> <pad> <image>` as special tokens (ids 0-4) and gives char offsets, which is all the
    adapters need from a real tokenizer. `extra_specials` adds a family's special tokens, by the attribute
    name its processor reads (`{"image_token": "<|image_pad|>", ...}`; the image token replaces `<image>`).
    """
    named = {"image_token": IMAGE_TOKEN, **(extra_specials or {})}
    specials = [*SPECIAL_TOKENS[:4], *dict.fromkeys(named.values())]
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=specials, min_frequency=1)
    tokenizer.train_from_iterator([*BASE_CORPUS, *corpus], trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens=named,
    )


def _text_config(sizes: Mapping[str, Any], tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    # `sizes` may set vocab_size above the tokenizer's (benchmarks at a real model's embedding size).
    special = {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    return LlamaConfig(**{**special, **sizes})


def _seeded(model_class, config, seed: int):
    # A private RNG stream: building a tiny model must not move the caller's global torch seed.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model_class(config)


def _save(model, processor, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return out


def llava_parts(
    config: Mapping[str, Any] | None = None, corpus: Iterable[str] = ()
) -> tuple[LlavaConfig, LlavaProcessor]:
    """The `LlavaConfig` and `LlavaProcessor` of a LLaVA-1.5-style model of the given sizes (no weights).

    The image processor pads to square and resizes to the vision tower's input size (the LLaVA-1.5 "pad"
    mode), so `pixel_values` is `(B, 3, image_size, image_size)` and the grid side is image_size / patch_size.
    """
    sizes = _merged(config)
    tokenizer = build_tokenizer(corpus)
    vision = CLIPVisionConfig(**sizes["vision"])
    llava_config = LlavaConfig(
        vision_config=vision,
        text_config=_text_config(sizes["text"], tokenizer),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=(vision.image_size // vision.patch_size) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    side = vision.image_size
    image_processor = LlavaImageProcessorPil(
        size={"height": side, "width": side}, crop_size={"height": side, "width": side}, do_pad=True
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=vision.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    return llava_config, processor


def build_tiny_llava(
    out_dir: str | Path, seed: int = 0, config: Mapping[str, Any] | None = None, corpus: Iterable[str] = ()
) -> Path:
    """Save a randomly initialised tiny LLaVA-1.5-style checkpoint (model + processor, see `llava_parts`)
    to `out_dir`. Returns the folder."""
    llava_config, processor = llava_parts(config, corpus)
    model = _seeded(LlavaForConditionalGeneration, llava_config, seed)
    return _save(model, processor, out_dir)


def build_tiny_llava_next(
    out_dir: str | Path, seed: int = 0, config: Mapping[str, Any] | None = None, corpus: Iterable[str] = ()
) -> Path:
    """Save a randomly initialised tiny LLaVA-NeXT checkpoint (any-res, small `image_grid_pinpoints`).

    `pixel_values` from its processor is `(B, n_crops, 3, image_size, image_size)` with `image_sizes (B, 2)`.
    Returns the folder.
    """
    sizes = _merged(config)
    tokenizer = build_tokenizer(corpus)
    vision = CLIPVisionConfig(**sizes["vision"])
    pinpoints = [list(p) for p in sizes["image_grid_pinpoints"]]
    next_config = LlavaNextConfig(
        vision_config=vision,
        text_config=_text_config(sizes["text"], tokenizer),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    model = _seeded(LlavaNextForConditionalGeneration, next_config, seed)
    side = vision.image_size
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": side},
        crop_size={"height": side, "width": side},
        image_grid_pinpoints=pinpoints,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=vision.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    return _save(model, processor, out_dir)
