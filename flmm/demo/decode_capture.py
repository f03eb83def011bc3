"""Every answer token's attention to the image and hidden states, recorded while the LMM generates it.

The teacher-forced prefill over prompt + answer (`prefill_features`, the fallback) gives answer token t the
attention row of the query *at t's position*. While `generate()` decodes, that query is the one of the step
that consumes t as its input (the step after the one that emits t): a single query over the KV cache, whose
first positions hold the image tokens. `DecodeRecorder` keeps each decode step's query and the keys it
attends over (hooked capture: the q/k each decoder layer's attention receives) and computes the rows from
them after generation, as the prefill computes its own; `generate()` returns the steps' hidden states
(`output_hidden_states`: the same L decoder-layer outputs, the last after the final norm, that
`LMMAdapter.forward` reads). The last generated token is consumed by no step of `generate()`: unless it is
a trailing special token (EOS), which the answer drops anyway, one more single-token forward over the
returned cache consumes it. That is a decode step, not a prefill, and it leaves `generate()` called exactly
as for the plain answer (stopping one step later would change its arguments and its stopping), so the text
is `generate_answer`'s.

The positions and tokens must be the prefill's: the answer is re-tokenized after its prompt as the prefill
does (`LMMAdapter.encode_text`; a tokenizer call, no forward), and the recorded features are used only when
that gives the prompt's ids followed by the generated ids (trailing special tokens aside), every one of them
a text token; the token offsets are then the prefill's own. Otherwise (a token that does not survive decode
and re-tokenizing, a special token inside the answer, a whitespace-only token the answer's trim drops)
`generate_with_features` gives None and the caller runs the prefill.

`emitting=True` (attend-and-segment's `authors` variant) gives each answer token the row of the step that
*emits* it instead: the query before it, i.e. the prefill's last prompt position for the first token (the
recorder keeps that one query of generate()'s prefill) and the step consuming token t - 1 for token t; no
extra forward is needed. `prefill_features(..., emitting=True)` gives the same rows teacher-forced (each
text token captured at the previous position, `flmm.engine.attend.emitting_ids`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from flmm.demo.answer import GenerationSettings, answer_text, generation_inputs, run_generate
from flmm.lmm import LlavaAdapter
from flmm.lmm.adapter import LMMAdapter, LMMImage
from flmm.lmm.capture import AttentionRecorder, CaptureRequest, attention_rows, reduce_rows
from flmm.lmm.plan import plan_batch, position_ids_from_mask
from flmm.lmm.text import EncodedText, Span

# Families whose decode steps see what their prefill sees: one view, 1-D positions that generate() counts
# like `LMMAdapter.model_inputs`, image features merged at the prefill only. Exact classes: LLaVA-NeXT and
# LLaVA-OneVision subclass LLaVA-1.5 but are not checked here.
DECODE_CAPTURE_FAMILIES: tuple[type[LMMAdapter], ...] = (LlavaAdapter,)


@dataclass
class TokenFeatures:
    """Every token of a text after its prompt, each captured as its own phrase (T tokens).

    offsets: T char spans `(start, end)` into the text (`EncodedText.text_offsets`). attention:
    `(T, C, gh, gw)` float32, as `LMMOutput.attention`. hidden: `(T, L, D)` float32, as
    `LMMOutput.hidden_states`.
    """

    offsets: list[Span]
    attention: torch.Tensor
    hidden: torch.Tensor
    # "own": token t's attention is the row of the query at t's position; "emitting": the row before it.
    rows: str = "own"


class DecodeRecorder(AttentionRecorder):
    """An `AttentionRecorder` for decoding over a KV cache.

    Within `record(request)` (the prompt's request: `plan_batch` with no phrase, for its `key_valid (B, S)`
    and `image_pos (B, N)`), every forward whose queries all come after the prompt leaves its query states
    and the keys they attend over (the whole cache: the earlier positions, then their own); forwards over
    prompt positions (generate()'s prefill) are skipped, no answer token is a query there. A decode step
    only keeps references: `image_rows` computes the rows of all recorded queries at once afterwards, one
    `attention_rows` per layer as in the prefill, rather than a dozen small kernels per layer and step.
    """

    def __init__(self, attention_modules: Sequence[nn.Module]):
        super().__init__(attention_modules)
        self._prompt: CaptureRequest | None = None
        self._layers: list[_LayerSteps] = []

    @contextmanager
    def record(self, request: CaptureRequest) -> Iterator[None]:
        """Record the decode steps run within the block (what an earlier block recorded is dropped)."""
        self._prompt = request
        self._layers = [_LayerSteps() for _ in self.attention_modules]
        with super().record(request):
            yield

    def observe(
        self,
        layer: int,
        query: torch.Tensor,
        key: torch.Tensor,
        scaling: float | None,
        window: int | None,
        softcap: float | None = None,
    ) -> None:
        start = key.shape[2] - query.shape[2]
        steps = self._layers[layer]
        if start < self._prompt.key_valid.shape[1]:
            # generate()'s prefill: only its last query (the step that emits the first answer token) is kept.
            steps.prompt_query, steps.prompt_keys = query[:, :, -1:], key
            steps.options = (query.shape[-1] ** -0.5 if scaling is None else scaling, window, softcap)
            return
        if not steps.queries:
            steps.start = start
        steps.queries.append(query)
        # The latest step's keys hold every earlier position too: a full cache grows, it is not rewritten.
        steps.keys = key
        steps.options = (query.shape[-1] ** -0.5 if scaling is None else scaling, window, softcap)

    def image_rows(self, count: int) -> torch.Tensor:
        """`(B, count, L * H, N)` float32: the image columns of the attention rows of the first `count`
        recorded queries (count >= 1), channel = layer * H + head."""
        prompt = self._prompt
        batch, length = prompt.key_valid.shape
        device = prompt.key_valid.device
        query_pos = torch.arange(count, device=device).expand(batch, count)
        one_each = torch.eye(count, device=device).expand(batch, count, count)
        layers = []
        for steps in self._layers:
            end = steps.start + count
            # Every position after the prompt holds a generated token, never padding.
            key_valid = F.pad(prompt.key_valid, (0, end - length), value=True)
            query = torch.cat(steps.queries, dim=2)[:, :, :count]
            rows = attention_rows(query, steps.keys[:, :, :end], query_pos, key_valid, *steps.options)
            layers.append(reduce_rows(rows, CaptureRequest(query_pos, key_valid, prompt.image_pos, one_each)))
        return torch.stack(layers, dim=2).flatten(2, 3)

    def prompt_last_rows(self) -> torch.Tensor:
        """`(B, 1, L * H, N)` float32: the image columns of the attention row of the prompt's last query in
        generate()'s prefill (the row that emits the first answer token)."""
        prompt = self._prompt
        query_pos = torch.zeros(
            prompt.key_valid.shape[0], 1, dtype=torch.long, device=prompt.key_valid.device
        )
        one = torch.ones(*query_pos.shape, 1, device=query_pos.device)
        layers = []
        for steps in self._layers:
            if steps.prompt_query is None:
                raise RuntimeError("the recorder saw no prefill over the prompt")
            rows = attention_rows(
                steps.prompt_query, steps.prompt_keys, query_pos, prompt.key_valid, *steps.options
            )
            layers.append(
                reduce_rows(rows, CaptureRequest(query_pos, prompt.key_valid, prompt.image_pos, one))
            )
        return torch.stack(layers, dim=2).flatten(2, 3)


@dataclass
class _LayerSteps:
    """What one layer's decode steps left: their queries `(B, H, S_q, d)` in order, the position of the
    first, the latest keys `(B, H_kv, S, d)`, and (scaling, sliding window, softcap)."""

    queries: list[torch.Tensor] = field(default_factory=list)
    start: int = 0
    keys: torch.Tensor | None = None
    options: tuple[float, int | None, float | None] | None = None
    prompt_query: torch.Tensor | None = None
    prompt_keys: torch.Tensor | None = None


def decode_capture_supported(adapter: LMMAdapter) -> bool:
    """Whether `generate_with_features` records `adapter`'s features: hooked capture (the recorder sees the
    q/k only through its attention function) and a family of `DECODE_CAPTURE_FAMILIES`."""
    return adapter.capture == "hooked" and type(adapter) in DECODE_CAPTURE_FAMILIES


@torch.no_grad()
def prefill_features(
    adapter: LMMAdapter, image: LMMImage, prompt: str, text: str, emitting: bool = False
) -> TokenFeatures:
    """One prefill over `prompt text` (one image), every text token its own phrase; `emitting`: each token's
    attention is the previous position's row (its hidden states are then that position's too)."""
    from flmm.engine.attend import emitting_ids  # flmm.engine imports the demo's modules

    encoded = adapter.encode_text([text], [[]], [image], prompts=[prompt])
    is_text = encoded.text_mask
    token_ids = (is_text.long().cumsum(dim=1) - 1).masked_fill(~is_text, -1)
    if emitting:
        token_ids = emitting_ids(is_text)
    out = adapter(encoded.input_ids, encoded.attention_mask, token_ids, [image])
    rows = "emitting" if emitting else "own"
    return TokenFeatures(_text_offsets(encoded), out.attention, out.hidden_states[:, 0], rows)


@torch.no_grad()
def generate_with_features(
    adapter: LMMAdapter,
    image: LMMImage,
    prompt: str,
    settings: GenerationSettings,
    emitting: bool = False,
) -> tuple[str, TokenFeatures | None]:
    """The LMM's answer to `prompt` about one image (exactly `generate_answer`'s) and its tokens' features
    recorded while decoding; None instead of the features when they would not be the prefill's (see the
    module docstring) or the answer is empty. Needs `decode_capture_supported(adapter)`. `emitting`: each
    token's attention is the row of the step that emits it (module docstring)."""
    inputs = generation_inputs(adapter, image, prompt)
    prompt_ids = inputs["input_ids"]
    layout = adapter.layout(image)
    no_phrase = torch.full_like(prompt_ids, -1)
    request = plan_batch(
        prompt_ids, inputs["attention_mask"], no_phrase, adapter.image_token_id, [layout]
    ).request
    recorder = DecodeRecorder(adapter.attention_modules())
    with recorder.record(request):
        output = run_generate(
            adapter, inputs, settings, output_hidden_states=True, return_dict_in_generate=True
        )
    generated = output.sequences[0, prompt_ids.shape[1] :]
    text = answer_text(adapter, generated)
    encoded = adapter.encode_text([text], [[]], [image], prompts=[prompt])
    count = _answer_token_count(
        encoded, prompt_ids, generated, set(adapter.processor.tokenizer.all_special_ids)
    )
    if not count:
        return text, None
    if emitting:
        columns = [recorder.prompt_last_rows()]
        if count > 1:
            columns.append(recorder.image_rows(count - 1))
        attention = layout.to_grid(torch.cat(columns, dim=1)[0], adapter.grid_size)
        hidden = _stack([step[1:] for step in output.hidden_states[:count]])
        return text, TokenFeatures(_text_offsets(encoded), attention, hidden, "emitting")
    # Decode step k + 1 consumes answer token k (generate()'s first forward is the prompt's prefill); the
    # last generated token is consumed by none of them.
    consumed = min(count, len(generated) - 1)
    columns = [recorder.image_rows(consumed)] if consumed else []
    hidden = [step[1:] for step in output.hidden_states[1 : consumed + 1]]
    if consumed < count:
        last_columns, last_hidden = _consume_last(adapter, inputs, output, recorder, request)
        columns.append(last_columns)
        hidden.append(last_hidden)
    attention = layout.to_grid(torch.cat(columns, dim=1)[0], adapter.grid_size)
    features = TokenFeatures(_text_offsets(encoded), attention, _stack(hidden))
    return text, features


def _answer_token_count(
    encoded: EncodedText, prompt_ids: torch.Tensor, generated: torch.Tensor, special_ids: set[int]
) -> int | None:
    """How many generated ids `(n,)` are the answer's tokens: those left after trailing special tokens,
    when the prefill's tokens (`encoded`, the answer after its prompt) are the prompt's ids `(1, S)` then
    exactly those, all of them text; None otherwise."""
    ids = generated.tolist()
    while ids and ids[-1] in special_ids:
        ids.pop()
    prompt = prompt_ids[0].tolist()
    text_tokens = [False] * len(prompt) + [True] * len(ids)
    if encoded.input_ids[0].tolist() != prompt + ids or encoded.text_mask[0].tolist() != text_tokens:
        return None
    return len(ids)


def _consume_last(
    adapter: LMMAdapter,
    inputs: dict[str, Any],
    output: Any,
    recorder: DecodeRecorder,
    request: CaptureRequest,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """The decode step generate() stops before: the last generated token over the returned cache, with the
    attention mask and position generate() would give it. Its image columns `(1, 1, C, N)` and hidden
    states (L of `(1, 1, D)`)."""
    sequences = output.sequences
    generated = sequences.shape[1] - inputs["input_ids"].shape[1]
    attention_mask = F.pad(inputs["attention_mask"], (0, generated), value=1)
    position_ids = position_ids_from_mask(attention_mask)[:, -1:]
    with recorder.record(request):
        out = adapter.lmm(
            input_ids=sequences[:, -1:],
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=output.cache,
            output_hidden_states=True,
            logits_to_keep=1,
        )
    return recorder.image_rows(1), out.hidden_states[1:]


def _stack(hidden: list[Sequence[torch.Tensor]]) -> torch.Tensor:
    """Per token, L layer outputs `(1, S_q, D)` (the token the last query) -> `(T, L, D)` float32."""
    return torch.stack([torch.stack([h[0, -1] for h in layers]) for layers in hidden]).float()


def _text_offsets(encoded: EncodedText) -> list[Span]:
    """The char spans of the one sample's text tokens."""
    return [tuple(offset) for offset in encoded.text_offsets[0][encoded.text_mask[0]].tolist()]
