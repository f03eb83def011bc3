"""Tiny offline instances of every LMM family, for the conformance kit: real transformers classes, small
configs, a locally trained word-level tokenizer holding the family's special tokens, and the family's own
image processor (the torchvision-free one). Adding a family to the kit is one entry in `BUILDERS`."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoProcessor,
    PreTrainedModel,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    Qwen2VLProcessor,
)

from flmm.lmm.loading import without_video
from flmm.lmm.tiny import build_tiny_llava, build_tiny_llava_next, build_tokenizer

TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4,
        "num_key_value_heads": 2, "initializer_range": 0.2}  # fmt: skip
QWEN_SPECIALS = {
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "vision_start_token": "<|vision_start|>",
    "vision_end_token": "<|vision_end|>",
    "im_start_token": "<|im_start|>",
    "im_end_token": "<|im_end|>",
}
# Qwen's chat format, one user turn with the image first (what the hub templates render for it).
QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = ["please give me a description of the image", "describe user assistant system"]


@dataclass
class TinyFamily:
    """A family's tiny model and processor; `image_hw` is an image size its processor keeps as it is (no
    resize), so an image region maps to cells exactly."""

    name: str
    model: PreTrainedModel
    processor: ProcessorMixin
    image_hw: tuple[int, int]


def _seeded(build: Callable[[], PreTrainedModel]) -> PreTrainedModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build().eval()


def _from_folder(name: str, folder: Path, image_hw: tuple[int, int]) -> TinyFamily:
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    return TinyFamily(name, model, AutoProcessor.from_pretrained(folder), image_hw)


def _qwen(name: str, config_class, model_class, processor_class, sliding: bool) -> TinyFamily:
    tokenizer = build_tokenizer(CORPUS, QWEN_SPECIALS)
    ids = {key: tokenizer.convert_tokens_to_ids(token) for key, token in QWEN_SPECIALS.items()}
    rope = {"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3]}  # sums to head_dim / 2
    text = {**TEXT, "vocab_size": len(tokenizer), "rope_parameters": rope}
    if sliding:  # layers 1 and 2 see 12 keys back: shorter than every test sequence
        text.update(use_sliding_window=True, sliding_window=12, max_window_layers=1)
    vision = {"depth": 2, "num_heads": 2, "patch_size": 14, "spatial_merge_size": 2}
    if model_class is Qwen2VLForConditionalGeneration:
        vision.update(embed_dim=32, hidden_size=64, mlp_ratio=2)
    else:
        vision.update(hidden_size=32, intermediate_size=64, out_hidden_size=64, fullatt_block_indexes=[1])
    config = config_class(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["image_token"],
        video_token_id=ids["video_token"],
        vision_start_token_id=ids["vision_start_token"],
        vision_end_token_id=ids["vision_end_token"],
    )
    model = _seeded(lambda: model_class._from_config(config))
    image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112)
    processor = without_video(processor_class)(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=None,
        chat_template=QWEN_TEMPLATE,
    )
    return TinyFamily(name, model, processor, (56, 84))


def _llava(folder: Path) -> TinyFamily:
    return _from_folder("llava", build_tiny_llava(folder, config={"text": TEXT}, corpus=CORPUS), (32, 32))


def _llava_next(folder: Path) -> TinyFamily:
    return _from_folder(
        "llava_next", build_tiny_llava_next(folder, config={"text": TEXT}, corpus=CORPUS), (32, 32)
    )


BUILDERS: dict[str, Callable[[Path], TinyFamily]] = {
    "llava": _llava,
    "llava_next": _llava_next,
    "qwen2_vl": lambda _: _qwen(
        "qwen2_vl", Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor, True
    ),
    "qwen2_5_vl": lambda _: _qwen(
        "qwen2_5_vl", Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor, False
    ),
}


# Families whose tiny instance has sliding-window layers shorter than the kit's sequences.
SLIDING = ["qwen2_vl"]


def _build(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    yield BUILDERS[request.param](folder)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def tiny_family(request, tmp_path_factory) -> TinyFamily:
    yield from _build(request, tmp_path_factory)


@pytest.fixture(scope="module", params=SLIDING)
def sliding_family(request, tmp_path_factory) -> TinyFamily:
    yield from _build(request, tmp_path_factory)
