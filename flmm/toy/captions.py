"""Text about synthetic scenes for pretraining the toy LMM: captions, QA pairs, answers and narratives.

Everything here is language: an object is named by its attributes and a coarse location word, or by one of
the synthetic world's own referring expressions (`flmm.data.synthetic_text`), never by coordinates. Five
formats, each a `(question, answer)` pair where the answer is what the LMM learns to predict:

    description  "Please give me a description of the image." -> "a small red circle on the left , a ..."
    referring    "Please give me a description of the image." -> "the circle above the blue star small ..."
    qa           "what colour is the circle on the left ?"     -> "red"
    answer       "What is left of the blue circle?"            -> "the small red triangle"
    narrative    "Describe the image in detail."               -> "In this picture we can see a red ..."

`answer` asks the synthetic ReasonSeg split's questions (`flmm.data.synthetic_reason`: an attribute, a
relation, a comparison or a location that singles out one object, short or as an instruction) and answers
with the object's phrase; `narrative` answers the GCG prompt with a PNG-style narrative
(`synthetic_text.narrative`). Their words beyond the first vocabulary are `chat_corpus()`.

Description and referring texts answer the grounding pipeline's own prompt, so the phrases the head later
grounds sit in the position the LMM learned them in. Objects come in random order: a caption's first word
does not tell which object comes next, so each phrase's tokens must find their object to go on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flmm.data.synthetic_reason import answer_phrase, template_texts
from flmm.data.synthetic_scene import COLOURS, SHAPES, STUFF
from flmm.data.synthetic_text import PLURALS, STYLES, Query, render, template_words, tokenize
from flmm.lmm.text import DEFAULT_PROMPT_TEMPLATE, DESCRIBE, DESCRIBE_IN_DETAIL, SHORT_ANSWER

FORMATS = ("description", "referring", "qa", "answer", "narrative")
SIZE_NAMES = {"small": "small", "large": "large"}
COUNT_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Word kinds whose held-out prediction accuracy the pretraining reports.
WORD_KINDS = {
    "colour": frozenset(COLOURS),
    "shape": frozenset(SHAPES),
    "size": frozenset(SIZE_NAMES.values()),
    "location": frozenset(("left", "right", "top", "bottom", "middle")),
}


@dataclass(frozen=True)
class ObjectFacts:
    """What the text may say about one object: attributes, its 3x3 location cell, its unique queries and
    the questions whose one answer it is."""

    shape: str
    colour: str
    size: str
    where: str
    queries: tuple[Query, ...]
    asks: tuple[str, ...] = ()


def where_words(cx: float, cy: float, width: int, height: int) -> str:
    """The location phrase of a centre in a 3x3 partition of the image: "at the top left", "in the middle"."""
    u, v = cx / width, cy / height
    col = "left" if u < 1 / 3 else "right" if u > 2 / 3 else None
    row = "top" if v < 1 / 3 else "bottom" if v > 2 / 3 else None
    if row and col:
        return f"at the {row} {col}"
    if col:
        return f"on the {col}"
    return f"at the {row}" if row else "in the middle"


def plural(shape: str) -> str:
    return PLURALS.get(shape, shape + "s")


def describe(o: ObjectFacts, rng: np.random.Generator, shuffle: float = 0.0) -> str:
    """ "a small red circle on the left"; with probability `shuffle` the four parts come in random order
    ("the circle on the left red small"), so that every word, not only the one that happens to settle
    which object is meant, is followed by something only that object's pixels tell."""
    parts = [SIZE_NAMES[o.size], o.colour, o.shape, o.where]
    if rng.random() < shuffle:
        parts = [parts[k] for k in rng.permutation(len(parts))]
    return f"{'the' if rng.random() < 0.5 else 'a'} {' '.join(parts)}"


def description(objects: list[ObjectFacts], rng: np.random.Generator, shuffle: float = 0.0) -> str:
    """Every object described, in random order: "a ... , the ... and a ... ."."""
    parts = [describe(objects[i], rng, shuffle) for i in rng.permutation(len(objects))]
    if len(parts) == 1:
        return f"{parts[0]} ."
    return f"{' , '.join(parts[:-1])} and {parts[-1]} ."


def expression(o: ObjectFacts, rng: np.random.Generator) -> str:
    """One of the object's unique referring expressions, in a random style, as lower-case words."""
    q = o.queries[int(rng.integers(len(o.queries)))]
    return " ".join(w for w in tokenize(render(q, str(rng.choice(STYLES)), rng)) if w != ".")


def referring(objects: list[ObjectFacts], rng: np.random.Generator) -> str:
    """Objects that have a unique expression, in random order, each as the expression followed at once by
    the object's four parts in random order ("the circle above the blue star small red circle at the top
    left ."): the expression's last word already has to find its object."""
    sentences = []
    for i in rng.permutation(len(objects)):
        o = objects[i]
        if o.queries:
            said = expression(o, rng)
            parts = [SIZE_NAMES[o.size], o.colour, o.shape, o.where]
            sentences.append(f"{said} {' '.join(parts[k] for k in rng.permutation(4))} .")
    return " ".join(sentences) or description(objects, rng)


def question(objects: list[ObjectFacts], rng: np.random.Generator) -> tuple[str, str]:
    """One question about the scene and its one-or-two-word answer."""
    referable = [o for o in objects if o.queries]
    kind = int(rng.integers(5 if referable else 2))
    if kind == 0:
        shape = str(rng.choice(SHAPES))
        n = sum(o.shape == shape for o in objects)
        return f"how many {plural(shape)} are there ?", COUNT_WORDS[min(n, len(COUNT_WORDS) - 1)]
    if kind == 1:
        if rng.random() < 0.5:
            o = objects[int(rng.integers(len(objects)))]
            colour, shape = o.colour, o.shape
        else:
            colour, shape = str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES))
        present = any(o.colour == colour and o.shape == shape for o in objects)
        return f"is there a {colour} {shape} ?", "yes" if present else "no"
    o = referable[int(rng.integers(len(referable)))]
    said = expression(o, rng)
    if kind == 2:
        return f"what colour is {said} ?", o.colour
    if kind == 3:
        return f"is {said} large or small ?", SIZE_NAMES[o.size]
    return f"where is {said} ?", o.where


def answer(objects: list[ObjectFacts], rng: np.random.Generator) -> tuple[str, str] | None:
    """A question one object answers and its phrase ("the small red triangle"); None when none does. Half
    the questions end with the request the answer-then-ground pipeline adds (`SHORT_ANSWER`)."""
    askable = [o for o in objects if o.asks]
    if not askable:
        return None
    o = askable[int(rng.integers(len(askable)))]
    asked = o.asks[int(rng.integers(len(o.asks)))]
    if rng.random() < 0.5:
        asked = f"{asked} {SHORT_ANSWER}"
    return asked, answer_phrase(o)


def render_sample(
    objects: list[ObjectFacts],
    fmt: str,
    rng: np.random.Generator,
    shuffle: float = 0.0,
    narrative: str | None = None,
) -> tuple[str, str]:
    """`(prompt, answer)` of one format; the prompt holds the image token once, like the grounding prompt.
    `shuffle`: the description format's chance of random word order per object (see `describe`);
    `narrative`: the scene's narrative, which the narrative format answers with. A scene without a question
    for the answer format gets a description instead."""
    if fmt == "answer":
        asked = answer(objects, rng)
        if asked is not None:
            return DEFAULT_PROMPT_TEMPLATE.replace(DESCRIBE, asked[0]), asked[1]
        fmt = "description"
    if fmt == "narrative":
        if narrative is None:
            raise ValueError("the narrative format needs the scene's narrative")
        return DEFAULT_PROMPT_TEMPLATE.replace(DESCRIBE, DESCRIBE_IN_DETAIL), narrative
    if fmt == "description":
        return DEFAULT_PROMPT_TEMPLATE, description(objects, rng, shuffle)
    if fmt == "referring":
        return DEFAULT_PROMPT_TEMPLATE, referring(objects, rng)
    if fmt == "qa":
        q, a = question(objects, rng)
        return DEFAULT_PROMPT_TEMPLATE.replace(DESCRIBE, q), a
    raise ValueError(f"unknown caption format {fmt!r}; expected one of {FORMATS}")


def corpus() -> list[str]:
    """Texts whose words make the toy tokenizer's vocabulary: every word the synthetic world's expressions,
    narratives, and the formats above can use (so nothing in the toy world tokenizes to <unk>)."""
    words = [*template_words(), *COLOURS, *SHAPES, *(plural(s) for s in SHAPES), *STUFF, *COUNT_WORDS]
    words += ["yes", "no", "what", "colour", "how", "many", "where", "or", "large", "is", ".", ",", "?"]
    words += tokenize(DESCRIBE)
    return [" ".join(words)]


def chat_corpus() -> list[str]:
    """Texts of the answer and narrative formats' prompts: their words beyond `corpus()` are added to a
    pretrained toy tokenizer when those formats are learned (`flmm.toy.pretrain_lmm.extend_vocabulary`)."""
    return [*template_texts(), DESCRIBE_IN_DETAIL, SHORT_ANSWER]
