"""Which parts of a text to ground, as char spans, and the answer written back with its phrases marked.

Sources of phrases: the whole (short) answer, reasoning-segmentation style; the keyword selector's
contiguous runs of selected tokens; or phrases the user gives, found in the answer. Text forms of a
grounded answer: `plain` (`[phrase]#i`, i = the phrase's colour in the overlay legend), `kosmos`
(Kosmos-2's markdown links `[phrase](<x0,y0,x1,y1>)`, box in original pixels, max edges exclusive) and
`glamm` (GLaMM's grounded-caption tags `<p> phrase </p> [SEG]`, spaces inside the tags as GLaMM writes
them).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from flmm.lmm.text import Span

TEXT_FORMATS = ("plain", "kosmos", "glamm")
# Trimmed from phrase edges: a phrase is what it names, not the sentence's punctuation.
EDGE_CHARS = " \t\n.,;:!?\"'()[]"


def trimmed(text: str, span: Span) -> Span | None:
    """`span` without the whitespace and punctuation at its edges; None when nothing is left."""
    start, end = span
    while start < end and text[start] in EDGE_CHARS:
        start += 1
    while end > start and text[end - 1] in EDGE_CHARS:
        end -= 1
    return (start, end) if start < end else None


def answer_span(answer: str) -> list[Span]:
    """The whole answer as one phrase (trimmed), or none for an empty answer."""
    span = trimmed(answer, (0, len(answer)))
    return [] if span is None else [span]


def selected_spans(text: str, selected: Sequence[bool], offsets: Sequence[Span]) -> list[Span]:
    """Contiguous runs of selected tokens -> trimmed char spans of `text`.

    selected: one flag per text token; offsets: each token's `(start, end)` in `text`, in order.
    """
    spans, run = [], None
    for flag, (start, end) in zip(selected, offsets, strict=True):
        if flag:
            run = (start, end) if run is None else (run[0], end)
        elif run is not None:
            spans.append(run)
            run = None
    if run is not None:
        spans.append(run)
    return [s for s in (trimmed(text, span) for span in spans) if s is not None]


def parse_phrase_list(value: str) -> list[str]:
    """`"a red circle; the sky"` -> `["a red circle", "the sky"]` (empty items dropped)."""
    return [p.strip() for p in value.split(";") if p.strip()]


def locate_phrases(text: str, phrases: Sequence[str]) -> list[Span] | None:
    """Spans of `phrases` in `text` (case-insensitive, first free occurrence, no overlap), or None when
    one of them is not in the text."""
    spans: list[Span] = []
    for phrase in phrases:
        # Matched in `text` itself: str.lower() can change a string's length ("İ"), and so its offsets.
        pattern, start = re.compile(re.escape(phrase), re.IGNORECASE), 0
        while True:
            match = pattern.search(text, start)
            if match is None:
                return None
            if all(match.end() <= a or match.start() >= b for a, b in spans):
                break
            start = match.start() + 1
        spans.append(match.span())
    return spans


def marked_text(text: str, spans: Sequence[Span], boxes: Sequence[Sequence[int] | None], style: str) -> str:
    """`text` with phrase i (at `spans[i]`, box `boxes[i]` or None) marked in one of `TEXT_FORMATS`."""
    if style not in TEXT_FORMATS:
        raise ValueError(f"text format must be one of {TEXT_FORMATS}, got {style!r}")
    pieces, cursor = [], 0
    for index in sorted(range(len(spans)), key=lambda i: spans[i]):
        start, end = spans[index]
        phrase, box = text[start:end], boxes[index]
        if style == "plain":
            mark = f"[{phrase}]#{index}"
        elif style == "kosmos":
            mark = f"[{phrase}]" if box is None else f"[{phrase}](<{','.join(str(int(v)) for v in box)}>)"
        else:
            mark = f"<p> {phrase} </p> [SEG]"
        pieces += [text[cursor:start], mark]
        cursor = end
    return "".join([*pieces, text[cursor:]])
