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
from transformers import AutoProcessor, LlavaForConditionalGeneration

from flmm.demo.answer import QUESTION_TEMPLATE
from tests.conftest import load_tool
from tests.test_engine_train import TOY_CONFIG, ToyWorld, build_toy_world, toy_overrides
from tests.test_reasonseg import write_reasonseg

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
def image_path(world: ToyWorld) -> Path:
    return sorted((world.data_root / "coco" / "train2017").glob("*.jpg"))[0]


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
    assert result["prompt"] == QUESTION_TEMPLATE.replace("{question}", QUESTION)
    height, width = Image.open(image_path).size[::-1]
    assert result["image_size"] == [height, width]
    [phrase] = result["phrases"]  # the whole (trimmed) answer
    start, end = phrase["span"]
    assert result["answer"][start:end] == phrase["text"] and phrase["in_answer"]
    mask = mask_utils.decode({**phrase["mask"], "counts": phrase["mask"]["counts"].encode()})
    assert mask.shape == (height, width)
    if mask.any():
        ys, xs = np.nonzero(mask)
        assert phrase["box"] == [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
    assert result["marked"]["plain"] in printed
    assert result["marked"]["glamm"] == f"<p>{phrase['text']}</p> [SEG]" + result["answer"][end:]
    overlay = Image.open(out / "overlay.png")
    assert overlay.width >= width and overlay.height > height  # enlarged, with a legend band below


def _generate(world: ToyWorld, image: Path, max_new_tokens: int, **kwargs) -> str:
    processor = AutoProcessor.from_pretrained(world.lmm, local_files_only=True)
    model = LlavaForConditionalGeneration.from_pretrained(world.lmm, local_files_only=True).eval()
    prompt = QUESTION_TEMPLATE.replace("{question}", QUESTION)
    inputs = processor(images=[Image.open(image).convert("RGB")], text=[prompt], return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, num_beams=1, **kwargs)
    new_tokens = output[0, inputs["input_ids"].shape[1] :]
    return processor.tokenizer.decode(new_tokens, skip_special_tokens=True).strip()


def test_answer_is_the_lmms_own_generate_output(checkpoint, world, image_path, tmp_path):
    assert _demo(checkpoint, image_path, tmp_path / "g", "--greedy", "--max-new-tokens", "7", QUESTION) == 0
    assert _result(tmp_path / "g")["answer"] == _generate(world, image_path, 7, do_sample=False)
    sample = ["--sample", "--seed", "3", "--temperature", "1.3", "--top-p", "0.8", "--max-new-tokens", "7"]
    assert _demo(checkpoint, image_path, tmp_path / "s", *sample, QUESTION) == 0
    torch.manual_seed(3)
    expected = _generate(world, image_path, 7, do_sample=True, temperature=1.3, top_p=0.8)
    assert _result(tmp_path / "s")["answer"] == expected


def test_user_phrases_in_kosmos_and_glamm_forms(checkpoint, image_path, tmp_path, capsys):
    phrases = ["--phrases", "red circle; the blue square"]
    assert _demo(checkpoint, image_path, tmp_path / "k", *phrases, "--format", "kosmos") == 0
    printed = capsys.readouterr().out.splitlines()[0]
    result = _result(tmp_path / "k")
    assert result["answer"] is None and result["source"] == "phrases"
    assert result["text"] == "red circle. the blue square"
    assert [p["text"] for p in result["phrases"]] == ["red circle", "the blue square"]
    boxes = [p["box"] for p in result["phrases"]]
    expected = ". ".join(
        f"[{p['text']}]" + ("" if box is None else f"(<{','.join(map(str, box))}>)")
        for p, box in zip(result["phrases"], boxes)
    )
    assert printed == expected
    assert result["marked"]["glamm"] == "<p>red circle</p> [SEG]. <p>the blue square</p> [SEG]"


def test_selector_chooses_from_the_answer_by_default(checkpoint, image_path, tmp_path):
    assert _demo(checkpoint, image_path, tmp_path / "sel", "--max-new-tokens", "6", QUESTION) == 0
    result = _result(tmp_path / "sel")
    assert result["source"] == "selector" and result["text"] == result["answer"]
    for phrase in result["phrases"]:
        start, end = phrase["span"]
        assert result["answer"][start:end] == phrase["text"]


def test_bad_input_is_one_clear_error(checkpoint, tmp_path, capsys):
    not_an_image = tmp_path / "x.jpg"
    not_an_image.write_bytes(b"no image")
    assert _demo(checkpoint, not_an_image, tmp_path / "bad", QUESTION) == 2
    err = capsys.readouterr().err
    assert f"{not_an_image}: corrupt or truncated image" in err and "Traceback" not in err


def test_test_py_reports_selector_token_f1_and_reasonseg(checkpoint, world, tmp_path):
    write_reasonseg(world.data_root)
    out = tmp_path / "eval"
    splits = ["--splits", "png:val2017,reasonseg:val", "--protocol", "first-sentence-concat"]
    argv = ["--ckpt", str(checkpoint), *splits, "--out", str(out), "--overlays", "1"]
    assert load_tool("test").main([*argv, "data.num_workers=0", "train.progress_bar=false"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["mode"] == "trained-head"
    metrics = results["splits"]["png:val2017"]["narrative"]
    assert 0 <= metrics["selector_token_F1"] <= 100 and metrics["selector_tokens"] > 0
    assert "selector_token_F1" in (out / "results.md").read_text()
    reason = results["splits"]["reasonseg:val"]["first-sentence-concat"]
    assert (reason["n_queries"], reason["n_short"], reason["n_long"]) == (3, 1, 2)
    assert 0 <= reason["gIoU_long"] <= 100 and "coarse_cIoU" in reason
    assert (out / "overlays" / "reasonseg_val_first-sentence-concat" / "worst_01.png").is_file()
