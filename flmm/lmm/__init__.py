"""Frozen-LMM adapters: one boundary (`LMMAdapter`), one file per family, `adapter_for` to pick one.

`adapter = adapter_for("llava-hf/llava-1.5-7b-hf")` (or a folder, or a built model) picks the family from
the model's class; `adapter.image_transform()` makes each image's `lmm_image`, `adapter.encode_text(...)`
the tokens, and `adapter(input_ids, attention_mask, phrase_ids, lmm_images)` returns an `LMMOutput` with
per-phrase token attention `(P, C, N)`, grid maps `(P, V*C, gh, gw)` and hidden states `(P, T, L, D)`.
Adapters are registered in `flmm.registry.LMM_ADAPTERS`.
"""

from flmm.errors import MissingWeightsError
from flmm.lmm.adapter import CAPTURE_MODES, LMMAdapter, LMMImage, LMMOutput
from flmm.lmm.capture import CAPTURE_ATTN_IMPLEMENTATION, AttentionRecorder, attention_rows
from flmm.lmm.families import FAMILIES, adapter_for
from flmm.lmm.families.llava import LlavaAdapter
from flmm.lmm.families.llava_next import LlavaNextAdapter
from flmm.lmm.families.qwen2_vl import Qwen2_5_VLAdapter, Qwen2VLAdapter
from flmm.lmm.layout import GridMeta, ImageLayout, raster_cells
from flmm.lmm.text import DEFAULT_PROMPT_TEMPLATE, EncodedText

__all__ = [
    "CAPTURE_ATTN_IMPLEMENTATION",
    "CAPTURE_MODES",
    "DEFAULT_PROMPT_TEMPLATE",
    "FAMILIES",
    "AttentionRecorder",
    "EncodedText",
    "GridMeta",
    "ImageLayout",
    "LMMAdapter",
    "LMMImage",
    "LMMOutput",
    "LlavaAdapter",
    "LlavaNextAdapter",
    "MissingWeightsError",
    "Qwen2VLAdapter",
    "Qwen2_5_VLAdapter",
    "adapter_for",
    "attention_rows",
    "raster_cells",
]
