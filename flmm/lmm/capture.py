"""Attention capture from a frozen decoder: phrase-token rows, image-token columns, every layer and head.

Two ways to get the rows (DESIGN.md §2):
- `eager`: the decoder runs transformers' eager attention and returns the full `(B, H, S, S)` probabilities;
  `select_rows` picks the phrase-token rows from them.
- `hooked`: the decoder keeps its plain kernel (sdpa, or eager where sdpa refuses the model).
  `CAPTURE_ATTN_IMPLEMENTATION` (`CAPTURE_EAGER_IMPLEMENTATION`) is a custom attention function registered
  through transformers' public `AttentionInterface` (with sdpa's (eager's) mask function under the same
  name in `AttentionMaskInterface`); it calls `sdpa_attention_forward` (the model's own
  `eager_attention_forward`) with exactly the arguments it got, so the model's outputs are bit-identical,
  and on the side hands the query and key states it received — after rotary embedding (1-D or M-RoPE) and
  any q/k norm, whatever the architecture — to an `AttentionRecorder`, which computes
  softmax(softcap(q k^T * scaling) + causal/padding/sliding-window mask) for the phrase-token rows only
  (`attention_rows`). The names hold no "sdpa", so transformers does not run its per-model sdpa support
  check on them (which refuses, e.g., soft-capped models). Grouped-query attention is
  handled by viewing the query heads as (kv_heads, heads per kv head), the layout of transformers'
  `repeat_kv`. Cost per layer: `(B, H, T, S)` floats for T phrase tokens, never `S x S`.

Both paths then keep the image-token columns and average the rows over each phrase's tokens right away
(`reduce_rows`), so what stays in memory per layer is `(B, P_max, H, N)`.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

from flmm.errors import ConfigError

CAPTURE_ATTN_IMPLEMENTATION = "flmm_capture"
CAPTURE_EAGER_IMPLEMENTATION = "flmm_capture_eager"

# attention module -> (recorder, layer index), only while a `record` block runs: copies of a recorder
# (deepcopy, pickling to DDP workers) then attach to their own modules, and nothing outlives the block.
_RECORDERS: weakref.WeakKeyDictionary[nn.Module, tuple[AttentionRecorder, int]] = weakref.WeakKeyDictionary()


@dataclass
class CaptureRequest:
    """What to keep from one forward pass.

    query_pos: `(B, T)` long, sequence positions of the phrase tokens (padded with a valid position).
    key_valid: `(B, S)` bool, False on padding.
    image_pos: `(B, N)` long, sequence positions of the image tokens (padded with any position).
    phrase_weights: `(B, P_max, T)` float32, 1 / n_tokens on the tokens of each phrase, 0 elsewhere.
    """

    query_pos: torch.Tensor
    key_valid: torch.Tensor
    image_pos: torch.Tensor
    phrase_weights: torch.Tensor


def attention_rows(
    query: torch.Tensor,
    key: torch.Tensor,
    query_pos: torch.Tensor,
    key_valid: torch.Tensor,
    scaling: float,
    sliding_window: int | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Causal attention probabilities of selected query rows, in float32.

    query: `(B, H, S_q, d)`; key: `(B, H_kv, S, d)` with H a multiple of H_kv and S_q <= S: the queries are
    the last S_q of the S key positions (S_q = S without a KV cache; S_q < S for decode steps' queries over
    a full KV cache); query_pos: `(B, T)` long, indices into the S_q queries; key_valid: `(B, S)` bool;
    sliding_window: keys within this many positions of the query (transformers' convention: key > query -
    window), None for all; softcap: scores become tanh(s / softcap) * softcap before masking (Gemma 2's
    attention soft-capping), None for none. Returns `(B, H, T, S)`: row t puts zero mass on keys after its
    query's position, outside the window and on padding keys.
    """
    batch, heads, queries, dim = query.shape
    kv_heads, seq = key.shape[1], key.shape[2]
    tokens = query_pos.shape[1]
    rows = query.gather(2, query_pos[:, None, :, None].expand(batch, heads, tokens, dim)).float()
    rows = rows.reshape(batch, kv_heads, (heads // kv_heads) * tokens, dim)
    scores = torch.matmul(rows, key.float().transpose(-1, -2)) * scaling
    scores = scores.view(batch, heads, tokens, seq)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    positions = torch.arange(seq, device=query.device)
    # Under a KV cache the queries are the last positions: keys are masked against their absolute positions.
    absolute = query_pos + (seq - queries)
    allowed = (positions[None, None, :] <= absolute[:, :, None]) & key_valid[:, None, :]
    if sliding_window is not None:
        allowed &= positions[None, None, :] > absolute[:, :, None] - sliding_window
    return scores.masked_fill(~allowed[:, None], float("-inf")).softmax(dim=-1)


def select_rows(probs: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
    """Rows `query_pos (B, T)` of full attention probabilities `(B, H, S, S)` -> `(B, H, T, S)` float32."""
    batch, heads, _, seq = probs.shape
    index = query_pos[:, None, :, None].expand(batch, heads, query_pos.shape[1], seq)
    return probs.gather(2, index).float()


def reduce_rows(rows: torch.Tensor, request: CaptureRequest) -> torch.Tensor:
    """Image columns of `rows (B, H, T, S)`, averaged over each phrase's tokens -> `(B, P_max, H, N)`."""
    batch, heads, tokens, _ = rows.shape
    index = request.image_pos[:, None, None, :].expand(batch, heads, tokens, request.image_pos.shape[1])
    image_cols = rows.gather(3, index)
    return torch.einsum("bpt,bhtn->bphn", request.phrase_weights, image_cols)


class AttentionRecorder:
    """Collects, during `record`, the phrase/image attention of the decoder layers it is attached to.

    `attention_modules[i]` is layer i's attention module; the model must run with
    `CAPTURE_ATTN_IMPLEMENTATION` as its text attention implementation for `record` to see anything.
    """

    def __init__(self, attention_modules: Sequence[nn.Module]):
        self.attention_modules = list(attention_modules)
        self._request: CaptureRequest | None = None
        self._maps: list[torch.Tensor | None] = []

    @contextmanager
    def record(self, request: CaptureRequest) -> Iterator[list[torch.Tensor | None]]:
        """Within the block, each forward layer l fills `maps[l]` with `(B, P_max, H, N)` float32."""
        for layer, module in enumerate(self.attention_modules):
            _RECORDERS[module] = (self, layer)
        self._request = request
        self._maps = [None] * len(self.attention_modules)
        try:
            yield self._maps
        finally:
            for module in self.attention_modules:
                _RECORDERS.pop(module, None)
            self._request = None
            self._maps = []

    def observe(
        self,
        layer: int,
        query: torch.Tensor,
        key: torch.Tensor,
        scaling: float | None,
        window: int | None,
        softcap: float | None = None,
    ) -> None:
        """Called by the capture attention function, inside `record`, with the states layer `layer` uses."""
        request = self._request
        scale = query.shape[-1] ** -0.5 if scaling is None else scaling
        rows = attention_rows(query, key, request.query_pos, request.key_valid, scale, window, softcap)
        self._maps[layer] = reduce_rows(rows, request)


def without_autocast(device: torch.device):
    """A block that computes in its tensors' own dtypes under any enclosing autocast (bf16-mixed training
    lowers matmuls to bf16): the frozen features a head trains on are those inference gives."""
    return torch.autocast(device.type, enabled=False)


def _observe(module: nn.Module, query: torch.Tensor, key: torch.Tensor, kwargs: dict) -> None:
    entry = _RECORDERS.get(module)
    if entry is not None:
        recorder, layer = entry
        with torch.no_grad(), without_autocast(query.device):
            recorder.observe(
                layer, query, key, kwargs.get("scaling"), kwargs.get("sliding_window"), kwargs.get("softcap")
            )


def _sdpa_with_capture(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs,
):
    _observe(module, query, key, kwargs)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def _eager_with_capture(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs,
):
    # Eager attention is each model's own function (soft-capping, sinks, ...), the one transformers falls
    # back to in the module's modeling file: call exactly that one.
    eager = sys.modules[type(module).__module__].eager_attention_forward
    _observe(module, query, key, kwargs)
    return eager(module, query, key, value, attention_mask, **kwargs)


_CAPTURE_IMPLEMENTATIONS = {"sdpa": CAPTURE_ATTN_IMPLEMENTATION, "eager": CAPTURE_EAGER_IMPLEMENTATION}


def capture_implementation(plain: str) -> str:
    """The attention implementation name hooked capture runs under, for a family's plain kernel."""
    if plain not in _CAPTURE_IMPLEMENTATIONS:
        raise ConfigError(
            f"hooked capture wraps the sdpa or eager kernel; plain_attention={plain!r} is not supported"
        )
    return _CAPTURE_IMPLEMENTATIONS[plain]


AttentionInterface.register(CAPTURE_ATTN_IMPLEMENTATION, _sdpa_with_capture)
AttentionMaskInterface.register(CAPTURE_ATTN_IMPLEMENTATION, sdpa_mask)
AttentionInterface.register(CAPTURE_EAGER_IMPLEMENTATION, _eager_with_capture)
AttentionMaskInterface.register(CAPTURE_EAGER_IMPLEMENTATION, eager_mask)
