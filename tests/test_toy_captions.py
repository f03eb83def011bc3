"""The toy LLaVA's pretraining text: words only, every object named with its attributes and location."""

from __future__ import annotations

import re

import numpy as np

from flmm.data.synthetic_text import Query
from flmm.toy.captions import ObjectFacts, description, referring, render_sample

RED_CIRCLE = ObjectFacts("circle", "red", "small", "on the left", (Query("attribute", colour="red"),))
BLUE_STAR = ObjectFacts("star", "blue", "large", "at the top right", ())


def _objects_in(text: str) -> list[str]:
    return [chunk.strip(" .") for chunk in re.split(r" , | and ", text)]


def test_description_names_every_object_once_in_size_colour_shape_location_order():
    rng = np.random.default_rng(0)
    for _ in range(20):
        chunks = _objects_in(description([RED_CIRCLE, BLUE_STAR], rng))
        assert sorted(c.split(" ", 1)[1] for c in chunks) == [
            "large blue star at the top right",
            "small red circle on the left",
        ]
        assert all(c.split(" ", 1)[0] in ("a", "the") for c in chunks)


def test_shuffled_descriptions_keep_the_parts_and_vary_their_order():
    rng = np.random.default_rng(0)
    orders = set()
    for _ in range(40):
        for chunk in _objects_in(description([RED_CIRCLE], rng, shuffle=1.0)):
            rest = chunk.split(" ", 1)[1]
            orders.add(rest)
            assert sorted(rest.replace("on the left", "on_the_left").split()) == sorted(
                ["small", "red", "circle", "on_the_left"]
            )
    assert len(orders) > 6


def test_referring_caption_says_the_expression_then_the_objects_four_parts():
    for seed in range(10):
        text = referring([RED_CIRCLE, BLUE_STAR], np.random.default_rng(seed))
        # Only the red circle has a unique expression ("the red one", "there is a red one here", ...);
        # the star has none and is left out.
        assert "star" not in text and text.endswith(" .")
        words = text[: -len(" .")].replace("on the left", "on_the_left").split()
        assert "red one" in " ".join(words[:-4]), text
        assert sorted(words[-4:]) == sorted(["small", "red", "circle", "on_the_left"]), text


def test_no_format_ever_writes_a_number_or_coordinate():
    rng = np.random.default_rng(2)
    for fmt in ("description", "referring", "qa"):
        for _ in range(30):
            prompt, answer = render_sample([RED_CIRCLE, BLUE_STAR], fmt, rng)
            assert not re.search(r"\d", answer), (fmt, answer)
            assert "<image>" in prompt


def test_qa_answers_are_true_of_the_scene():
    """Every question kind answers from the objects' facts: counts, presence, and the referred object's
    colour, size and location (only the red circle has a unique expression here)."""
    rng = np.random.default_rng(3)
    seen = set()
    for _ in range(200):
        prompt, answer = render_sample([RED_CIRCLE, BLUE_STAR], "qa", rng)
        asked = prompt.split("<image>")[-1]
        if m := re.search(r"how many (\w+) are there \?", asked):
            kind, expected = "count", {"circles": "one", "stars": "one"}.get(m.group(1), "no")
        elif m := re.search(r"is there a (\w+) (\w+) \?", asked):
            present = m.groups() in {("red", "circle"), ("blue", "star")}
            kind, expected = "presence", "yes" if present else "no"
        elif "what colour is" in asked:
            kind, expected = "colour", "red"
        elif "large or small" in asked:
            kind, expected = "size", "small"
        else:
            assert "where is" in asked, asked
            kind, expected = "where", "on the left"
        seen.add(kind)
        assert answer == expected, (asked, answer)
    assert seen == {"count", "presence", "colour", "size", "where"}
