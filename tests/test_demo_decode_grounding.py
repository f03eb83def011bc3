"""The demo's grounding during generation: the answer tokens' attention and hidden states recorded on the
decode steps equal the prefill's over prompt + answer (float32: atol 1e-5, hidden states also rtol 1e-5),
and so do the masks; the answer is plain generate()'s; the prefill runs only as the fallback.

The toy world's LLaVA (2 layers x 2 heads) and a default tiny LLaVA with grouped-query attention (3 layers,
4 heads over 2 kv heads); a head and keyword selector with their initial weights, which is enough to compare
two ways of computing their inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import LlavaForConditionalGeneration, LogitsProcessor, LogitsProcessorList

from flmm.config import load_config
from flmm.demo.answer import GenerationSettings, generate_answer, generation_inputs
from flmm.demo.decode_capture import decode_capture_supported, generate_with_features, prefill_features
from flmm.demo.pipeline import Demo
from flmm.engine.build import config_to_dict
from flmm.engine.module import GroundingModule
from flmm.lmm import LlavaAdapter
from flmm.lmm.capture import attention_rows
from flmm.lmm.families.llava_next import LlavaNextAdapter
from flmm.lmm.tiny import build_tiny_llava, build_tiny_llava_next
from tests.conftest import TOY_CONFIG, ToyWorld, build_toy_world, toy_overrides

QUESTION = "What is the red circle?"
# float32: the decode steps' matmuls differ from the prefill's in shape, not in what they compute. Attention
# probabilities are <= 1; hidden states reach ~20 in the tiny LLaVA, so they also get a relative part.
ATOL, HIDDEN_RTOL = 1e-5, 1e-5
GREEDY = GenerationSettings(max_new_tokens=8)
# The toy samples some special tokens (its vocabulary is small); seed 0 samples none within 8 tokens.
SAMPLED = GenerationSettings(max_new_tokens=8, sample=True, seed=0)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> ToyWorld:
    return build_toy_world(tmp_path_factory.mktemp("decode_world"))


@pytest.fixture(scope="module")
def image(world: ToyWorld) -> np.ndarray:
    """A 40 x 64 crop of a world image (not square: the image goes through the pad path)."""
    source = sorted((world.data_root / "coco" / "train2017").glob("*.jpg"))[0]
    return np.array(Image.open(source).convert("RGB").crop((0, 8, 64, 48)))


@pytest.fixture(scope="module")
def head_module(world: ToyWorld, tmp_path_factory) -> GroundingModule:
    """The toy's adapter, mask head + SAM refiner and keyword selector, as a checkpoint would hold them."""
    extra = ["model.selector.type=KeywordSelector", "model.selector.width=16"]
    cfg = load_config(TOY_CONFIG, toy_overrides(world, tmp_path_factory.mktemp("unused"), *extra))
    torch.manual_seed(0)
    return GroundingModule(config_to_dict(cfg), val_splits=[]).eval()


def _head_demo(module: GroundingModule, during: bool) -> Demo:
    return Demo(module.adapter, head=module.model, selector=module.selector, ground_during_generation=during)


def _attend_demo(world: ToyWorld, tmp_path: Path, during: bool, *extra: str) -> Demo:
    overrides = toy_overrides(world, tmp_path / "unused", *extra)
    return Demo.from_config(TOY_CONFIG, overrides, device="cpu", ground_during_generation=during)


def _force(adapter: LlavaAdapter, monkeypatch, step: int, token: int) -> None:
    """Make the LMM emit `token` as its `step`-th new token (from 0), the rest as it would."""

    class Force(LogitsProcessor):
        def __init__(self, start: int):
            self.start = start

        def __call__(self, input_ids, scores):
            if input_ids.shape[1] - self.start == step:
                scores = torch.full_like(scores, -torch.inf)
                scores[:, token] = 0.0
            return scores

    generate = adapter.lmm.generate

    def forced(**kwargs):
        processors = LogitsProcessorList([Force(kwargs["input_ids"].shape[1])])
        return generate(**kwargs, logits_processor=processors)

    monkeypatch.setattr(adapter.lmm, "generate", forced)


def _count_passes(
    adapter: LlavaAdapter, monkeypatch, function: Callable, *args, **kwargs
) -> tuple[Any, dict]:
    """`function(*args, **kwargs)` and, while it ran, the calls of the adapter's forward (a prefill over
    prompt + text), and the LMM's forwards over more than one new token (prefills) and over one (steps)."""
    calls = {"adapter": 0, "prefill": 0, "step": 0}
    forward = adapter.forward

    def counted(*args, **kwargs):
        calls["adapter"] += 1
        return forward(*args, **kwargs)

    def hook(module, args, kwargs):
        calls["prefill" if kwargs["input_ids"].shape[1] > 1 else "step"] += 1

    handle = adapter.lmm.register_forward_pre_hook(hook, with_kwargs=True)
    with monkeypatch.context() as patch:
        patch.setattr(adapter, "forward", counted)
        try:
            result = function(*args, **kwargs)
        finally:
            handle.remove()
    return result, calls


def _assert_features_equal(
    adapter: LlavaAdapter, image: np.ndarray, settings: GenerationSettings, monkeypatch
) -> tuple[str, dict[str, int]]:
    """The decode path's features against the prefill's; the answer and the decode path's passes."""
    lmm_image = adapter.image_transform()(image)["lmm_image"]
    prompt = adapter.prompt(QUESTION)
    (text, decoded), calls = _count_passes(
        adapter, monkeypatch, generate_with_features, adapter, lmm_image, prompt, settings
    )
    prefilled = prefill_features(adapter, lmm_image, prompt, text)
    assert decoded is not None and decoded.offsets == prefilled.offsets
    tokens = len(decoded.offsets)
    assert decoded.attention.shape == prefilled.attention.shape == (tokens, adapter.channels, 4, 4)
    assert decoded.hidden.shape == prefilled.hidden.shape
    torch.testing.assert_close(decoded.attention, prefilled.attention, atol=ATOL, rtol=0)
    torch.testing.assert_close(decoded.hidden, prefilled.hidden, atol=ATOL, rtol=HIDDEN_RTOL)
    return text, calls


def test_attention_rows_of_the_last_queries_over_a_cache_are_the_full_rows():
    torch.manual_seed(0)
    query, key = torch.randn(1, 4, 9, 8), torch.randn(1, 2, 9, 8)  # grouped-query: 4 heads, 2 kv heads
    key_valid = torch.ones(1, 9, dtype=torch.bool)
    full = attention_rows(query, key, torch.arange(9)[None], key_valid, 8**-0.5, sliding_window=4)
    last = attention_rows(query[:, :, 6:], key, torch.arange(3)[None], key_valid, 8**-0.5, sliding_window=4)
    torch.testing.assert_close(last, full[:, :, 6:])
    assert torch.all(last[..., 0, 7:] == 0) and torch.all(last[..., 0, :3] == 0)  # causal, in the window


@pytest.mark.parametrize(
    "settings",
    [GREEDY, SAMPLED, GenerationSettings(max_new_tokens=1)],
    ids=["greedy", "sampled", "one-token"],
)
def test_decode_features_equal_the_prefill(world, image, settings, monkeypatch):
    text, calls = _assert_features_equal(LlavaAdapter(world.lmm), image, settings, monkeypatch)
    # No EOS within max_new_tokens: the last token's row comes from one extra single-token step.
    tokens = settings.max_new_tokens
    assert len(text.split()) == tokens and calls == {"adapter": 0, "prefill": 1, "step": tokens}


def test_decode_features_equal_the_prefill_under_grouped_query_attention(tmp_path, image, monkeypatch):
    _assert_features_equal(
        LlavaAdapter(build_tiny_llava(tmp_path / "gqa", seed=0)), image, GREEDY, monkeypatch
    )


def test_an_answer_ended_by_eos_needs_no_extra_step(world, image, monkeypatch):
    adapter = LlavaAdapter(world.lmm)
    _force(adapter, monkeypatch, 3, adapter.processor.tokenizer.eos_token_id)
    text, calls = _assert_features_equal(adapter, image, GREEDY, monkeypatch)
    # generate()'s prompt prefill, then the steps consuming the 3 answer tokens (the third emits EOS).
    assert len(text.split()) == 3 and calls == {"adapter": 0, "prefill": 1, "step": 3}


def test_the_answer_is_plain_generates(world, image):
    adapter = LlavaAdapter(world.lmm)
    lmm_image = adapter.image_transform()(image)["lmm_image"]
    prompt = adapter.prompt(QUESTION)
    inputs = generation_inputs(adapter, lmm_image, prompt)
    plain = LlavaForConditionalGeneration.from_pretrained(world.lmm, local_files_only=True).eval()
    texts = []
    for settings in (GREEDY, SAMPLED, GenerationSettings(max_new_tokens=8, sample=True, seed=2)):
        torch.manual_seed(settings.seed)
        with torch.no_grad():
            output = plain.generate(**inputs, **settings.generate_kwargs())
        new_tokens = output[0, inputs["input_ids"].shape[1] :]
        expected = adapter.processor.tokenizer.decode(new_tokens, skip_special_tokens=True).strip()
        text, features = generate_with_features(adapter, lmm_image, prompt, settings)
        assert text == expected == generate_answer(adapter, lmm_image, prompt, settings)
        assert features is not None
        texts.append(text)
    assert len(set(texts)) == 3  # the sampling really ran, and the seed mattered


def _same_results(first, second) -> None:
    assert (first.answer, first.text, first.source) == (second.answer, second.text, second.source)
    assert [(p.text, p.span, p.box) for p in first.phrases] == [
        (p.text, p.span, p.box) for p in second.phrases
    ]
    for a, b in zip(first.phrases, second.phrases, strict=True):
        assert np.array_equal(a.mask, b.mask)
        assert a.score == pytest.approx(b.score, abs=1e-5)


@pytest.mark.parametrize("source", ["answer", "selector"])
def test_trained_head_masks_are_the_same_both_ways(head_module, image, source):
    decoded = _head_demo(head_module, True).run(image, QUESTION, settings=GREEDY, source=source)
    prefilled = _head_demo(head_module, False).run(image, QUESTION, settings=GREEDY, source=source)
    _same_results(decoded, prefilled)
    assert decoded.phrases or source == "selector"


def test_attend_and_segment_masks_are_the_same_both_ways(world, image, tmp_path):
    decoding, prefilling = _attend_demo(world, tmp_path, True), _attend_demo(world, tmp_path, False)
    first = decoding.run(image, QUESTION, settings=GREEDY, source="answer")
    _same_results(first, prefilling.run(image, QUESTION, settings=GREEDY, source="answer"))
    word = [first.text.split()[1].upper()]  # a phrase of the answer: grounded where it stands in it
    second = decoding.run(image, QUESTION, word, GREEDY)
    _same_results(second, prefilling.run(image, QUESTION, word, GREEDY))
    assert first.phrases and second.phrases[0].in_answer


def test_decode_grounding_runs_one_prefill_fewer(head_module, image, monkeypatch):
    passes = {}
    for during in (True, False):
        demo = _head_demo(head_module, during)
        _, passes[during] = _count_passes(demo.adapter, monkeypatch, demo.run, image, QUESTION, None, GREEDY)
    # generate(): its prompt prefill + 7 steps for 8 tokens. Decoding adds the 8th token's step, the
    # fallback a prefill over prompt + answer.
    assert passes[True] == {"adapter": 0, "prefill": 1, "step": 8}
    assert passes[False] == {"adapter": 1, "prefill": 2, "step": 7}


def test_eager_capture_and_other_families_fall_back_to_the_prefill(world, image, tmp_path, monkeypatch):
    eager = _attend_demo(world, tmp_path, True, "model.lmm.capture=eager")
    assert not decode_capture_supported(eager.adapter)
    result, calls = _count_passes(
        eager.adapter, monkeypatch, eager.run, image, QUESTION, None, GREEDY, "answer"
    )
    assert calls == {"adapter": 1, "prefill": 2, "step": 7} and result.phrases
    assert decode_capture_supported(LlavaAdapter(world.lmm))
    assert not decode_capture_supported(LlavaNextAdapter(build_tiny_llava_next(tmp_path / "next", seed=0)))


def test_phrases_not_in_the_answer_and_the_switch_use_the_prefill(world, image, tmp_path, monkeypatch):
    demo = _attend_demo(world, tmp_path, True)
    result, calls = _count_passes(
        demo.adapter, monkeypatch, demo.run, image, QUESTION, ["blue square"], GREEDY
    )
    assert calls["adapter"] == 1 and result.text == "blue square" and not result.phrases[0].in_answer
    off = _attend_demo(world, tmp_path, False)
    _, calls = _count_passes(off.adapter, monkeypatch, off.run, image, QUESTION, None, GREEDY, "answer")
    assert calls["adapter"] == 1


def test_a_token_lost_to_decoding_falls_back_to_the_prefill(world, image, tmp_path, monkeypatch):
    # A special token inside the answer is dropped from its text: re-tokenizing gives other positions.
    demo = _attend_demo(world, tmp_path, True)
    _force(demo.adapter, monkeypatch, 2, demo.adapter.processor.tokenizer.pad_token_id)
    lmm_image = demo.prepare(image).lmm_image
    text, features = generate_with_features(demo.adapter, lmm_image, demo.adapter.prompt(QUESTION), GREEDY)
    assert features is None and len(text.split()) == GREEDY.max_new_tokens - 1
    result, calls = _count_passes(
        demo.adapter, monkeypatch, demo.run, image, QUESTION, None, GREEDY, "answer"
    )
    assert calls["adapter"] == 1 and result.text == text and result.phrases
