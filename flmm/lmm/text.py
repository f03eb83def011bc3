"""Text side of the frozen-LMM input: the chat prompt, tokenisation, and char spans -> per-token phrase ids.

The text to ground is teacher-forced as if it were the assistant's answer to a user turn holding the image
and a request for a description, in the model's own chat template (`chat_prompt`, `join_prompt`). Phrases
are given as char spans `(start, end)` into the text; a token belongs to the phrase whose span shares at
least one non-whitespace character with the token's own char span (the fast tokenizer's offset mapping).
Sharing only whitespace does not count, so a sentencepiece token such as "▁dog" whose offsets include the
space before it is not claimed by the phrase that ends at that space.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

DESCRIBE = "Please give me a description of the image."
# The request of grounded conversation generation (GLaMM's GCG prompt).
DESCRIBE_IN_DETAIL = "Describe the image in detail."
# Added after a reasoning question when its answer is to be grounded (answer first, then ground).
SHORT_ANSWER = "Answer with a short phrase."
# LLaVA-1.5's conversation format with the description request: what llava-hf's chat template renders, and
# the prompt the toy LLaVA was pretrained with.
DEFAULT_PROMPT_TEMPLATE = f"USER: <image>\n{DESCRIBE} ASSISTANT:"

Span = tuple[int, int]


@dataclass
class EncodedText:
    """Token ids of a batch of prompts, with the phrase each token grounds.

    input_ids: `(B, S)` long. attention_mask: `(B, S)` long, 0 on padding.
    phrase_ids: `(B, S)` long, index of the phrase within its sample, -1 for tokens that ground nothing.
    text_offsets: `(B, S, 2)` long, each token's char span `(start, end)` in its sample's text (clipped to
        it), `(-1, -1)` for tokens outside the text (prompt, image tokens, padding).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    phrase_ids: torch.Tensor
    text_offsets: torch.Tensor

    @property
    def text_mask(self) -> torch.Tensor:
        """`(B, S)` bool, True on the tokens of the text (what follows the prompt)."""
        return self.text_offsets[..., 0] >= 0


def chat_prompt(
    processor: Any, question: str, image_token: str, fallback_template: str, system: str | None = None
) -> str:
    """One user turn (the image, then `question`) and the start of the assistant turn, rendered by the
    processor's chat template; `fallback_template` ("{question}" replaced) when the processor has none.
    system: a system turn before it (its text then a newline before the fallback template); None: none
    given, so a template that writes a default system prompt of its own writes it.

    ValueError for an empty question or one holding the image token.
    """
    question = question.strip()
    if not question:
        raise ValueError("the question is empty")
    if image_token in question:
        raise ValueError(f"the question must not contain the image token {image_token!r}")
    if getattr(processor, "chat_template", None):
        turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        if system is not None:
            turn.insert(0, {"role": "system", "content": [{"type": "text", "text": system}]})
        return processor.apply_chat_template(turn, add_generation_prompt=True, tokenize=False)
    prompt = fallback_template.replace("{question}", question)
    return prompt if system is None else f"{system}\n{prompt}"


def join_prompt(prompt: str, text: str) -> str:
    """The prompt followed by the teacher-forced text: one space between them unless the prompt ends in
    whitespace (chat templates that open the assistant turn with a newline); the prompt alone for no text
    (what `generate` continues)."""
    return prompt + text if not text or prompt[-1:].isspace() else f"{prompt} {text}"


def check_spans(text: str, spans: Sequence[Span], sample: int) -> list[Span]:
    """`spans` as int pairs; ValueError when one is out of the text, empty, or overlaps another."""
    checked = [(int(start), int(end)) for start, end in spans]
    for index, (start, end) in enumerate(checked):
        if not 0 <= start < end <= len(text):
            raise ValueError(
                f"sample {sample}: phrase {index} span ({start}, {end}) is not a non-empty range inside the "
                f"text of length {len(text)}: {text!r}"
            )
    ordered = sorted(range(len(checked)), key=lambda i: checked[i])
    for first, second in itertools.pairwise(ordered):
        if checked[second][0] < checked[first][1]:
            raise ValueError(
                f"sample {sample}: phrase spans {checked[first]} (phrase {first}) and {checked[second]} "
                f"(phrase {second}) overlap; every token can ground one phrase only"
            )
    return checked


def phrase_ids_from_offsets(
    prompt: str, offsets: Sequence[Span], text_start: int, spans: Sequence[Span], sample: int = 0
) -> list[int]:
    """Phrase index per token (-1 for none) from the tokenizer's char offsets into `prompt`.

    `spans` index the text, which starts at char `text_start` of `prompt`. A token that two spans cut into
    (a span edge inside a word) goes to the phrase listed first. Raises ValueError when a phrase ends up with
    no token (e.g. its span holds only whitespace, or only part of a token another phrase took).
    """
    ids = [-1] * len(offsets)
    text_tokens = [(token, lo, hi) for token, (lo, hi) in enumerate(offsets) if hi > text_start]
    for phrase, (start, end) in enumerate(spans):
        lo_span, hi_span = text_start + start, text_start + end
        found = False
        for token, lo, hi in text_tokens:
            lo_overlap, hi_overlap = max(lo, lo_span), min(hi, hi_span)
            if ids[token] == -1 and lo_overlap < hi_overlap and prompt[lo_overlap:hi_overlap].strip():
                ids[token] = phrase
                found = True
        if not found:
            raise ValueError(
                f"sample {sample}: phrase {phrase} span ({start}, {end}) "
                f"{prompt[lo_span:hi_span]!r} covers no token of the tokenized text"
            )
    return ids


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    texts: Sequence[str],
    phrase_spans: Sequence[Sequence[Span]],
    padding_side: str,
) -> EncodedText:
    """Tokenize full prompts that each end with their text and map the phrase spans to tokens.

    prompts[i] must end with texts[i] (the prompt template, expanded image tokens and a space come first).
    Special tokens are added unless the prompts already start with the BOS token (chat templates that write
    it), so a sequence holds one BOS either way, as the model's processor makes it.
    """
    if not tokenizer.is_fast:
        raise TypeError(f"{type(tokenizer).__name__} is not a fast tokenizer; phrase mapping needs offsets")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    bos = tokenizer.bos_token
    has_bos = bos is not None and all(prompt.startswith(bos) for prompt in prompts)
    batch = tokenizer(
        list(prompts),
        add_special_tokens=not has_bos,
        return_offsets_mapping=True,
        padding=True,
        padding_side=padding_side,
        return_tensors="pt",
    )
    phrase_ids = torch.full_like(batch["input_ids"], -1)
    text_offsets = torch.full((*batch["input_ids"].shape, 2), -1, dtype=torch.long)
    for sample, (prompt, text, spans) in enumerate(zip(prompts, texts, phrase_spans, strict=True)):
        offsets = batch["offset_mapping"][sample].tolist()
        text_start = len(prompt) - len(text)
        ids = phrase_ids_from_offsets(prompt, offsets, text_start, spans, sample)
        phrase_ids[sample] = torch.tensor(ids)
        for token, (lo, hi) in enumerate(offsets):
            # Padding and special tokens have empty (0, 0) offsets; a token ending in the prompt is not text.
            if hi > text_start and hi > lo and batch["attention_mask"][sample, token]:
                text_offsets[sample, token, 0] = max(lo, text_start) - text_start
                text_offsets[sample, token, 1] = hi - text_start
    return EncodedText(batch["input_ids"], batch["attention_mask"], phrase_ids, text_offsets)
