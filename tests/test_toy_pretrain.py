"""Pretraining the toy models: the loss falls, the result reloads offline bit-identically, the tokenizer
covers the synthetic world, and the toy LLaVA goes through the same adapter code as llava-hf checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import LlavaForConditionalGeneration, LlavaProcessor

from flmm.data.datasets import RefCocoDataset
from flmm.data.safe_pickle import load_plain_pickle
from flmm.data.synthetic import SyntheticConfig, generate_world
from flmm.lmm import LlavaAdapter
from flmm.models.sam_build import build_sam
from flmm.toy.captions import WORD_KINDS, render_sample
from flmm.toy.pretrain_lmm import REPORT_FILE, encode_batch, evaluate, image_transform
from flmm.toy.recipe import LmmRecipe, SamRecipe, load_recipe, world_config
from flmm.toy.world import lmm_pool
from tests.conftest import REPO_ROOT, load_tool

# A 4x4-grid LLaVA of width 32 on 64 px scenes: a few seconds of CPU per run.
TINY = [
    "sizes.vision.image_size=32",
    "sizes.vision.hidden_size=32",
    "sizes.vision.intermediate_size=64",
    "sizes.vision.num_attention_heads=2",
    "sizes.text.hidden_size=32",
    "sizes.text.intermediate_size=64",
    "sizes.text.num_hidden_layers=2",
    "sizes.text.num_attention_heads=2",
    "sizes.text.num_key_value_heads=2",
    "world.size=64",
    "scenes=48",
    "eval_scenes=8",
    "batch_size=8",
    "lr=3e-3",
    "warmup_steps=5",
    "formats.referring=0",
]
STEPS = 40
SAM_TINY = ["scenes=8", "eval_scenes=4", "batch_size=4", "world.size=64"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("toy_lmm") / "llava"
    argv = ["--out", str(out), "--config", str(REPO_ROOT / "configs" / "toy_lmm.yaml"), "--quiet"]
    assert load_tool("pretrain_toy_lmm").main([*argv, "--steps", str(STEPS), *TINY]) == 0
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy_world")
    generate_world(root, SyntheticConfig(seed=0, n_res_images=20, n_png_images=10, size=64, max_objects=3))
    return root


def _recipe() -> LmmRecipe:
    return load_recipe(LmmRecipe, REPO_ROOT / "configs" / "toy_lmm.yaml", [*TINY, f"steps={STEPS}"])


def test_short_pretraining_lowers_the_loss(pretrained: Path):
    curve = json.loads((pretrained / REPORT_FILE).read_text())["loss_curve"]
    assert [step for step, _ in curve] == [0, 10, 20, 30, STEPS - 1]
    losses = [loss for _, loss in curve]
    assert np.mean(losses[-2:]) < 0.6 * losses[0]


def test_pretrained_model_reloads_offline_bit_identically(pretrained: Path, tmp_path: Path):
    report = json.loads((pretrained / REPORT_FILE).read_text())
    model = LlavaForConditionalGeneration.from_pretrained(pretrained, local_files_only=True)
    processor = LlavaProcessor.from_pretrained(pretrained, local_files_only=True)
    recipe = _recipe()
    vision = model.config.vision_config
    pool = lmm_pool(
        world_config(recipe), recipe.eval_scenes, recipe.seed, "lmm_eval", image_transform(processor, 32)
    )
    # The reloaded weights reproduce the held-out numbers the trained model reported, to the last bit.
    assert (
        evaluate(model, processor, pool, recipe, (vision.image_size // vision.patch_size) ** 2)
        == report["held_out"]
    )
    model.save_pretrained(tmp_path, safe_serialization=True)
    saved, again = load_file(pretrained / "model.safetensors"), load_file(tmp_path / "model.safetensors")
    assert saved.keys() == again.keys() and all(torch.equal(saved[k], again[k]) for k in saved)
    assert set(report["held_out"]["accuracy"]) == {*WORD_KINDS, "all"}


def test_pretraining_is_deterministic(pretrained: Path, tmp_path: Path):
    argv = ["--out", str(tmp_path), "--config", str(REPO_ROOT / "configs" / "toy_lmm.yaml"), "--quiet"]
    assert load_tool("pretrain_toy_lmm").main([*argv, "--steps", "3", *TINY]) == 0
    again = tmp_path / "again"
    assert load_tool("pretrain_toy_lmm").main([*argv[:1], str(again), *argv[2:], "--steps", "3", *TINY]) == 0
    assert (tmp_path / "model.safetensors").read_bytes() == (again / "model.safetensors").read_bytes()


def test_tokenizer_covers_every_word_of_the_synthetic_world(pretrained: Path, world: Path):
    tokenizer = LlavaProcessor.from_pretrained(pretrained, local_files_only=True).tokenizer
    texts = [
        sentence["raw"]
        for refs in sorted((world / "coco").glob("refcoco*/refs(*).p"))
        for ref in load_plain_pickle(refs)
        for sentence in ref["sentences"]
    ]
    narratives = json.loads((world / "coco" / "annotations" / "png_coco_train2017.json").read_text())
    texts += [n["caption"] for n in narratives]
    pool = lmm_pool(
        world_config(_recipe()), 8, 0, "lmm_eval", lambda image: {"pixel_values": torch.zeros(3, 4, 4)}
    )
    rng = np.random.default_rng(0)
    texts += [" ".join(render_sample(objs, fmt, rng)) for objs in pool.objects for fmt in ("referring", "qa")]
    unknown = {t for t in texts if tokenizer.unk_token_id in tokenizer(t)["input_ids"]}
    assert not unknown


def test_pretraining_input_is_the_grounding_input(pretrained: Path):
    """The answer tokens the LMM learns on are the tokens the adapter later grounds, in the same place."""
    adapter = LlavaAdapter(pretrained, capture="hooked")
    text = "the small red circle on the left"
    encoded = adapter.encode_text([text], [[(0, len(text))]], [{"pixel_values": torch.zeros(3, 32, 32)}])
    prompt = adapter.prompt()
    batch = encode_batch(adapter.processor, [(prompt, text)], 16)
    assert torch.equal(batch["input_ids"][0, :-1], encoded.input_ids[0])
    assert torch.equal(batch["labels"][0, :-1] != -100, encoded.text_mask[0])


def test_toy_llava_goes_through_the_llava_adapter_in_both_capture_modes(pretrained: Path, world: Path):
    hooked, eager = LlavaAdapter(pretrained, capture="hooked"), LlavaAdapter(pretrained, capture="eager")
    transform = image_transform(hooked.processor, 32)
    samples = [RefCocoDataset(world, "refcoco", "val", transform=transform)[i] for i in range(2)]
    images = [{"pixel_values": s["pixel_values"]} for s in samples]
    texts, spans = [s["text"] for s in samples], [s["phrase_spans"] for s in samples]
    encoded = hooked.encode_text(texts, spans, images)
    inputs = (encoded.input_ids, encoded.attention_mask, encoded.phrase_ids, images)
    out, reference = hooked(*inputs), eager(*inputs)
    assert out.attention.shape == (2, 2 * 2, 4, 4)
    torch.testing.assert_close(out.attention, reference.attention, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out.hidden_states, reference.hidden_states, rtol=1e-4, atol=1e-5)


def test_short_sam_pretraining_saves_a_loadable_checkpoint(tmp_path: Path):
    out = tmp_path / "sam.pth"
    argv = ["--out", str(out), "--config", str(REPO_ROOT / "configs" / "toy_sam.yaml"), "--quiet"]
    assert load_tool("pretrain_toy_sam").main([*argv, "--steps", "3", *SAM_TINY]) == 0
    sam = build_sam("tiny", str(out))
    assert torch.equal(sam.mask_decoder.iou_token.weight, torch.load(out)["mask_decoder.iou_token.weight"])
    report = json.loads(out.with_suffix(".pth.json").read_text())
    assert set(report["held_out"]) == {"mIoU_point", "mIoU_box"}
    recipe = load_recipe(SamRecipe, REPO_ROOT / "configs" / "toy_sam.yaml", [*SAM_TINY, "steps=3"])
    assert report["recipe"] == vars(recipe)


def test_pretraining_logged_to_a_file_prints_plain_progress_lines(tmp_path: Path, capsys):
    argv = ["--out", str(tmp_path / "sam.pth"), "--config", str(REPO_ROOT / "configs" / "toy_sam.yaml")]
    assert load_tool("pretrain_toy_sam").main([*argv, "--steps", "3", *SAM_TINY]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("pretraining toy SAM")]
    assert len(lines) == 1 and "step 3/3" in lines[0] and "samples/s" in lines[0]


@pytest.fixture(scope="module")
def second_stage(pretrained: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("toy_lmm_chat") / "llava"
    argv = ["--out", str(out), "--config", str(REPO_ROOT / "configs" / "toy_lmm_chat.yaml"), "--quiet"]
    assert load_tool("pretrain_toy_lmm").main([*argv, "--steps", "3", *TINY, f"init={pretrained}"]) == 0
    return out


def test_second_stage_adds_the_questions_words_and_keeps_the_old_ids(pretrained: Path, second_stage: Path):
    before = LlavaProcessor.from_pretrained(pretrained, local_files_only=True).tokenizer
    after = LlavaProcessor.from_pretrained(second_stage, local_files_only=True).tokenizer
    added = json.loads((second_stage / REPORT_FILE).read_text())["added_words"]
    assert {"biggest", "smallest", "describe", "answer", ";"} <= set(added)
    assert not set(added) & set(before.get_vocab())
    text = "the small red circle on the left , in this picture we can see two stars ."
    assert after(text)["input_ids"] == before(text)["input_ids"]
    model = LlavaForConditionalGeneration.from_pretrained(second_stage, local_files_only=True)
    assert model.get_input_embeddings().num_embeddings == len(after)


def test_second_stage_tokenizes_every_question_and_request_without_unk(second_stage: Path):
    tokenizer = LlavaProcessor.from_pretrained(second_stage, local_files_only=True).tokenizer
    pool = lmm_pool(
        world_config(_recipe()), 16, 0, "lmm_eval", lambda image: {"pixel_values": torch.zeros(3, 4, 4)}
    )
    rng = np.random.default_rng(0)
    texts = [" ".join(render_sample(objs, "answer", rng)) for objs in pool.objects for _ in range(4)]
    texts += [
        " ".join(render_sample(objs, "narrative", rng, narrative=n))
        for objs, n in zip(pool.objects, pool.narratives)
    ]
    assert len({t for t in texts if "?" in t}) > 16
    assert not {t for t in texts if tokenizer.unk_token_id in tokenizer(t)["input_ids"]}
    # A new word is matched as a whole word only.
    assert tokenizer.convert_ids_to_tokens(tokenizer("outside")["input_ids"]) == ["<s>", "<unk>"]


def test_second_stage_reports_how_many_held_out_questions_it_answers(second_stage: Path):
    held_out = json.loads((second_stage / REPORT_FILE).read_text())["held_out"]
    assert 0.0 <= held_out["answer_exact_match"] <= 1.0
    assert {"answer", "narrative"} <= set(held_out["loss"])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["init=/nonexistent/llava"], "no toy LLaVA folder at /nonexistent/llava"),
        (["steps=0"], "steps must be >= 1 to go on training"),
    ],
)
def test_second_stage_refuses_a_bad_init(pretrained: Path, tmp_path: Path, capsys, overrides, message):
    argv = ["--out", str(tmp_path / "x"), "--config", str(REPO_ROOT / "configs" / "toy_lmm_chat.yaml")]
    assert load_tool("pretrain_toy_lmm").main([*argv, "--quiet", f"init={pretrained}", *overrides]) == 2
    assert message in capsys.readouterr().err


def test_second_stage_is_deterministic(pretrained: Path, second_stage: Path, tmp_path: Path):
    """Its new embedding rows are seeded random draws: the same command gives the same bytes."""
    argv = ["--out", str(tmp_path), "--config", str(REPO_ROOT / "configs" / "toy_lmm_chat.yaml"), "--quiet"]
    assert load_tool("pretrain_toy_lmm").main([*argv, "--steps", "3", *TINY, f"init={pretrained}"]) == 0
    assert (tmp_path / "model.safetensors").read_bytes() == (second_stage / "model.safetensors").read_bytes()


def test_second_stage_refuses_to_overwrite_its_init(pretrained: Path, capsys):
    argv = ["--out", str(pretrained), "--config", str(REPO_ROOT / "configs" / "toy_lmm_chat.yaml")]
    assert load_tool("pretrain_toy_lmm").main([*argv, "--quiet", f"init={pretrained}"]) == 2
    assert "is also the output folder" in capsys.readouterr().err
