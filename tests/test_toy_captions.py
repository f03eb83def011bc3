"""The toy LLaVA's pretraining text: words only, every object named with its attributes and location."""

from __future__ import annotations

import re

import numpy as np
import pytest

from flmm.data.synthetic_text import Query
from flmm.lmm.text import DESCRIBE_IN_DETAIL, SHORT_ANSWER
from flmm.toy.captions import ObjectFacts, description, referring, render_sample

RED_CIRCLE = ObjectFacts(
    "circle",
    "red",
    "small",
    "on the left",
    (Query("attribute", colour="red"),),
    ("Which shape is red?", "What is left of the large blue star?"),
)
BLUE_STAR = ObjectFacts("star", "blue", "large", "at the top right", ())
NARRATIVE = "In this picture we can see a small red circle on the left and a blue star."


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
    for fmt in ("description", "referring", "qa", "answer"):
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


def test_answer_format_asks_what_one_object_answers_and_answers_with_its_phrase():
    rng = np.random.default_rng(4)
    asked = set()
    for _ in range(40):
        prompt, answer = render_sample([RED_CIRCLE, BLUE_STAR], "answer", rng)
        question = prompt.split("<image>\n")[1].removesuffix(" ASSISTANT:")
        asked.add(question.removesuffix(f" {SHORT_ANSWER}"))
        assert answer == "the small red circle"
    # Only the red circle has questions; the star is never asked about.
    assert asked == set(RED_CIRCLE.asks)


def test_answer_questions_end_with_the_short_answer_request_half_the_time():
    rng = np.random.default_rng(5)
    prompts = [render_sample([RED_CIRCLE], "answer", rng)[0] for _ in range(400)]
    share = np.mean([prompt.endswith(f"{SHORT_ANSWER} ASSISTANT:") for prompt in prompts])
    assert 0.4 < share < 0.6


def test_answer_format_falls_back_to_a_description_when_nothing_can_be_asked():
    prompt, answer = render_sample([BLUE_STAR], "answer", np.random.default_rng(0))
    assert "description of the image" in prompt and "large blue star at the top right" in answer


def test_narrative_format_answers_the_gcg_request_with_the_scenes_narrative():
    prompt, answer = render_sample([RED_CIRCLE], "narrative", np.random.default_rng(0), narrative=NARRATIVE)
    assert prompt.endswith(f"{DESCRIBE_IN_DETAIL} ASSISTANT:") and answer == NARRATIVE
    with pytest.raises(ValueError, match="narrative"):
        render_sample([RED_CIRCLE], "narrative", np.random.default_rng(0))
