"""tools/demo.py end to end on the embedded default's toy models, and the selector's F1 in tools/test.py.

One tiny world and one checkpoint per module: 3 training steps on PNG narratives with the keyword selector
on (its labels are the narratives' grounded phrases).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from transformers import LlavaForConditionalGeneration

from flmm.demo.answer import GenerationSettings
from flmm.demo.phrases import answer_span, locate_phrases, marked_text
from flmm.demo.pipeline import Demo
from flmm.lmm import LlavaAdapter
from flmm.masks import mask_box
from tests.conftest import (
    TOY_CONFIG,
    ToyWorld,
    build_toy_world,
    load_tool,
    toy_overrides,
    wide_image,
    write_reasonseg,
)

QUESTION = "What is the red circle?"
SELECTOR = ["model.selector.type=KeywordSelector", "model.selector.width=16"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> ToyWorld:
    return build_toy_world(tmp_path_factory.mktemp("demo_world"))


@pytest.fixture(scope="module")
def checkpoint(world: ToyWorld, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("demo_run") / "run"
    splits = ["data.train_splits=[png:train2017]", "data.val_splits=[png:val2017]"]
    assert load_tool("train").main([str(TOY_CONFIG), *toy_overrides(world, run, *SELECTOR, *splits)]) == 0
    return run / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def image_path(world: ToyWorld, tmp_path_factory) -> Path:
    return wide_image(world, tmp_path_factory.mktemp("demo_image"))


def _demo(checkpoint: Path, image: Path, out: Path, *args: str) -> int:
    return load_tool("demo").main(
        ["--ckpt", str(checkpoint), "--image", str(image), "--out", str(out), *args]
    )


def _result(out: Path) -> dict:
    return json.loads((out / "result.json").read_text(encoding="utf-8"))


def test_cli_prints_the_marked_answer_and_writes_overlay_and_result(checkpoint, image_path, tmp_path, capsys):
    out = tmp_path / "out"
    assert _demo(checkpoint, image_path, out, "--source", "answer", "--max-new-tokens", "6", QUESTION) == 0
    printed = capsys.readouterr().out
    result = _result(out)
    assert (
        result["question"] == QUESTION and result["mode"] == "trained-head" and result["source"] == "answer"
    )
    assert result["text"] == result["answer"] and result["answer"]
    assert result["prompt"] == f"USER: <image>\n{QUESTION} ASSISTANT:"  # the toy's (LLaVA-1.5) format
    assert result["image_size"] == [40, 64]
    height, width = 40, 64
    [phrase] = result["phrases"]  # the whole (trimmed) answer
    start, end = phrase["span"]
    assert result["answer"][start:end] == phrase["text"] and phrase["in_answer"]
    mask = mask_utils.decode({**phrase["mask"], "counts": phrase["mask"]["counts"].encode()})
    assert mask.shape == (height, width)
    assert phrase["box"] == mask_box(mask.astype(bool))
    assert result["marked"]["plain"] in printed
    glamm = result["answer"][:start] + f"<p> {phrase['text']} </p> [SEG]" + result["answer"][end:]
    assert result["marked"]["glamm"] == glamm
    overlay = Image.open(out / "overlay.png")
    assert overlay.width >= width and overlay.height > height  # enlarged, with a legend band below


def _generate(world: ToyWorld, image: Path, max_new_tokens: int, **kwargs) -> str:
    """The plain model's own generate() on the inputs the adapter builds (its image path, its chat prompt)."""
    adapter = LlavaAdapter(world.lmm)
    batch = adapter.encode([Image.open(image)], [""], [[]], prompts=[adapter.prompt(QUESTION)])
    inputs = adapter.model_inputs(batch["input_ids"], batch["attention_mask"], batch["images"])
    inputs.pop("position_ids")
    model = LlavaForConditionalGeneration.from_pretrained(world.lmm, local_files_only=True).eval()
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, num_beams=1, **kwargs)
    new_tokens = output[0, inputs["input_ids"].shape[1] :]
    return adapter.processor.tokenizer.decode(new_tokens, skip_special_tokens=True).strip()


def test_answer_is_the_lmms_own_generate_output(checkpoint, world, image_path, tmp_path):
    assert _demo(checkpoint, image_path, tmp_path / "g", "--greedy", "--max-new-tokens", "7", QUESTION) == 0
    assert _result(tmp_path / "g")["answer"] == _generate(world, image_path, 7, do_sample=False)
    sample = ["--sample", "--seed", "3", "--temperature", "1.3", "--top-p", "0.8", "--max-new-tokens", "7"]
    assert _demo(checkpoint, image_path, tmp_path / "s", *sample, QUESTION) == 0
    torch.manual_seed(3)
    expected = _generate(world, image_path, 7, do_sample=True, temperature=1.3, top_p=0.8)
    assert _result(tmp_path / "s")["answer"] == expected
    # The random toy LMM samples something other than its greedy answer: the sampling path really ran.
    assert expected != _result(tmp_path / "g")["answer"]


def test_user_phrases_in_kosmos_and_glamm_forms(checkpoint, image_path, tmp_path, capsys):
    phrases = ["--phrases", "red circle; the blue square"]
    assert _demo(checkpoint, image_path, tmp_path / "k", *phrases, "--format", "kosmos") == 0
    printed = capsys.readouterr().out.splitlines()[0]
    result = _result(tmp_path / "k")
    assert result["answer"] is None and result["source"] == "phrases"
    assert result["text"] == "red circle. the blue square"
    assert [p["text"] for p in result["phrases"]] == ["red circle", "the blue square"]
    boxes = [p["box"] for p in result["phrases"]]
    assert all(0 <= b[0] < b[2] <= 64 and 0 <= b[1] < b[3] <= 40 for b in boxes if b is not None)
    expected = ". ".join(
        f"[{p['text']}]" + ("" if box is None else f"(<{','.join(map(str, box))}>)")
        for p, box in zip(result["phrases"], boxes)
    )
    assert printed == expected
    assert result["marked"]["glamm"] == "<p> red circle </p> [SEG]. <p> the blue square </p> [SEG]"


def test_text_forms_mark_each_phrase_with_its_index_and_box():
    text = "a dog next to the red car."
    spans, boxes = [(18, 25), (0, 5)], [[3, 4, 50, 30], None]  # listed out of text order
    assert marked_text(text, spans, boxes, "plain") == "[a dog]#1 next to the [red car]#0."
    assert marked_text(text, spans, boxes, "kosmos") == "[a dog] next to the [red car](<3,4,50,30>)."
    assert marked_text(text, spans, boxes, "glamm") == (
        "<p> a dog </p> [SEG] next to the <p> red car </p> [SEG]."
    )
    with pytest.raises(ValueError, match="text format"):
        marked_text(text, spans, boxes, "html")


def test_user_phrases_are_found_in_the_answer_whatever_their_case():
    text = "İstanbul has a Red car and a red car."
    spans = locate_phrases(text, ["red car", "RED CAR"])
    assert [text[a:b] for a, b in spans] == ["Red car", "red car"] and spans[0] == (15, 22)
    assert locate_phrases(text, ["red car", "blue car"]) is None


def test_sam_embedding_once_per_image_and_at_most_one_prefill_per_question(
    checkpoint, image_path, monkeypatch
):
    demo = Demo.from_checkpoint(checkpoint, device="cpu")
    calls = {"sam": 0, "lmm": 0}

    def counted(name, function):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(demo.refiner, "encode_images", counted("sam", demo.refiner.encode_images))
    monkeypatch.setattr(demo.adapter, "forward", counted("lmm", demo.adapter.forward))
    image = np.array(Image.open(image_path).convert("RGB"))
    settings = GenerationSettings(max_new_tokens=4)
    first = demo.run(image, QUESTION, settings=settings, source="answer")
    word = first.phrases[0].text.split()[0]
    # The same (greedy) answer, with a phrase of it given in another case: grounded where it stands.
    second = demo.run(image, QUESTION, [word.upper()], settings)
    assert second.source == "phrases" and second.text == second.answer == first.answer
    [phrase] = second.phrases
    assert phrase.in_answer and second.answer[slice(*phrase.span)] == phrase.text
    assert phrase.text.lower() == word.lower()
    third = demo.run(image, None, ["red circle", "the blue square"], settings)
    assert len(third.phrases) == 2 and not any(p.in_answer for p in third.phrases)
    # Phrases of an answer are grounded from its own decoding; others take one prefill, however many.
    assert calls == {"sam": 1, "lmm": 1}
    demo.run(image[::-1].copy(), None, ["red circle"], settings)
    assert calls == {"sam": 2, "lmm": 2}


def test_selector_chooses_from_the_answer_by_default(checkpoint, image_path, tmp_path):
    assert _demo(checkpoint, image_path, tmp_path / "sel", "--max-new-tokens", "6", QUESTION) == 0
    result = _result(tmp_path / "sel")
    assert result["source"] == "selector" and result["text"] == result["answer"]
    for phrase in result["phrases"]:
        start, end = phrase["span"]
        assert result["answer"][start:end] == phrase["text"]
    # A threshold every token passes selects one run, the whole answer; one no token passes, nothing.
    every = ["model.selector.threshold=1e-6", "--max-new-tokens", "6", QUESTION]
    assert _demo(checkpoint, image_path, tmp_path / "all", *every) == 0
    everything = _result(tmp_path / "all")
    assert everything["answer"] == result["answer"]
    whole = [result["answer"][a:b] for a, b in answer_span(result["answer"])]
    assert whole and [p["text"] for p in everything["phrases"]] == whole
    none = ["model.selector.threshold=0.999999", "--max-new-tokens", "6", QUESTION]
    assert _demo(checkpoint, image_path, tmp_path / "none", *none) == 0
    assert _result(tmp_path / "none")["phrases"] == []


def test_bad_input_is_one_clear_error(checkpoint, image_path, tmp_path, capsys):
    not_an_image = tmp_path / "x.jpg"
    not_an_image.write_bytes(b"no image")
    assert _demo(checkpoint, not_an_image, tmp_path / "bad", QUESTION) == 2
    assert f"{not_an_image}: corrupt or truncated image" in capsys.readouterr().err
    occupied = tmp_path / "occupied"
    occupied.write_text("a file where --out wants a folder")
    assert _demo(checkpoint, image_path, occupied, "--phrases", "red circle") == 2
    assert f"cannot write the outputs to --out {occupied}" in capsys.readouterr().err


def test_test_py_reports_selector_token_f1_and_reasonseg(checkpoint, world, tmp_path, capsys):
    write_reasonseg(world.data_root)
    out = tmp_path / "eval"
    splits = ["--splits", "png:val2017,reasonseg:val", "--protocol", "first-sentence-concat"]
    argv = ["--ckpt", str(checkpoint), *splits, "--out", str(out), "--overlays", "1"]
    assert load_tool("test").main([*argv, "data.num_workers=0", "train.progress_bar=false"]) == 0
    printed = capsys.readouterr().out
    assert "- png:val2017 (narrative): selector_token_F1 " in printed
    assert "- reasonseg:val (first-sentence-concat): cIoU_short " in printed
    results = json.loads((out / "results.json").read_text())
    assert results["mode"] == "trained-head"
    metrics = results["splits"]["png:val2017"]["narrative"]
    assert 0 <= metrics["selector_token_F1"] <= 100 and metrics["selector_tokens"] > 0
    assert "selector_token_F1" in (out / "results.md").read_text()
    reason = results["splits"]["reasonseg:val"]["first-sentence-concat"]
    assert (reason["n_queries"], reason["n_short"], reason["n_long"]) == (3, 1, 2)
    assert 0 <= reason["gIoU_long"] <= 100 and "coarse_cIoU" in reason
    assert (out / "overlays" / "reasonseg_val_first-sentence-concat" / "worst_01.png").is_file()
