"""Frozen-LMM adapters: one interface (`LMMAdapter`), LLaVA-1.5 and LLaVA-NeXT implementations.

`adapter.encode(images, texts, phrase_spans)` or `adapter.encode_text(...)` builds the inputs;
`adapter(**batch)` returns an `LMMOutput` with per-phrase attention maps `(P, C, gh, gw)` and hidden states
`(P, T, L, D)`. Adapters are registered in `flmm.registry.LMM_ADAPTERS`.
"""

from flmm.errors import MissingWeightsError
from flmm.lmm.base import CAPTURE_MODES, LMMAdapter, LMMOutput
from flmm.lmm.capture import CAPTURE_ATTN_IMPLEMENTATION, AttentionRecorder, attention_rows
from flmm.lmm.grid import GridLayout, GridMeta
from flmm.lmm.llava import LlavaAdapter
from flmm.lmm.llava_next import LlavaNextAdapter
from flmm.lmm.text import DEFAULT_PROMPT_TEMPLATE, EncodedText

__all__ = [
    "CAPTURE_ATTN_IMPLEMENTATION",
    "CAPTURE_MODES",
    "DEFAULT_PROMPT_TEMPLATE",
    "AttentionRecorder",
    "EncodedText",
    "GridLayout",
    "GridMeta",
    "LMMAdapter",
    "LMMOutput",
    "LlavaAdapter",
    "LlavaNextAdapter",
    "MissingWeightsError",
    "attention_rows",
]
