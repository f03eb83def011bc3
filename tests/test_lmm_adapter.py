"""LMM adapters: frozen for real, offline loading, clear missing-weights errors, text encoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, CLIPImageProcessorPil, LlavaForConditionalGeneration

from flmm.errors import ConfigError
from flmm.lmm import LlavaAdapter, LlavaNextAdapter, MissingWeightsError, adapter_for
from flmm.lmm.loading import resolve_checkpoint
from flmm.lmm.tiny import build_tiny_llava
from flmm.registry import LMM_ADAPTERS

UNICODE_TEXT = "Un café près du 猫 rouge, à gauche"
UNICODE_SPANS = [(3, 7), (16, 23), (27, 33)]  # "café", "猫 rouge", "gauche"


def _image(seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 60, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("tiny_llava"), seed=1, corpus=[UNICODE_TEXT])


@pytest.fixture(scope="module")
def adapter(llava_dir):
    return LlavaAdapter(llava_dir, capture="hooked")


def test_adapter_is_frozen_and_stays_in_eval(adapter):
    assert not any(p.requires_grad for p in adapter.parameters())
    adapter.train()
    assert adapter.training and not adapter.lmm.training
    assert not any(module.training for module in adapter.lmm.modules())

    head = torch.nn.Conv2d(3 * 4, 1, 1)
    out = adapter(**adapter.encode([_image()], ["a red dog"], [[(0, 9)]]))
    assert not out.attention.requires_grad and not out.hidden_states.requires_grad
    head(out.attention).sum().backward()
    assert head.weight.grad is not None
    assert all(p.grad is None for p in adapter.lmm.parameters())


def test_tiny_checkpoint_round_trips_offline(llava_dir):
    assert (llava_dir / "model.safetensors").is_file()
    first = LlavaForConditionalGeneration.from_pretrained(llava_dir, local_files_only=True)
    again = LlavaAdapter(llava_dir, capture="eager", local_files_only=True).lmm
    for (name, a), (_, b) in zip(first.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert AutoProcessor.from_pretrained(llava_dir, local_files_only=True).image_token == "<image>"


def test_registry_builds_adapter_with_dtype(llava_dir):
    adapter = LMM_ADAPTERS.build(
        {"type": "LlavaAdapter", "model": str(llava_dir), "capture": "hooked", "torch_dtype": "bfloat16"}
    )
    assert adapter.lmm.dtype == torch.bfloat16
    out = adapter(**adapter.encode([_image()], ["a red dog"], [[(0, 9)]]))
    assert out.attention.dtype == torch.float32 and torch.isfinite(out.attention).all()


def test_missing_local_folder_raises_one_clear_error(tmp_path):
    missing = tmp_path / "weights" / "llava-1.5-7b-hf"
    with pytest.raises(MissingWeightsError, match="does not exist") as info:
        LlavaAdapter(missing)
    assert str(missing) in str(info.value) and info.value.__cause__ is None


def test_folder_without_weights_names_what_is_missing(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(MissingWeightsError, match=r"lacks weights"):
        resolve_checkpoint(tmp_path)


def test_uncached_hub_id_offline_says_where_weights_go(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(MissingWeightsError, match="not in the local Hugging Face cache") as info:
        LlavaAdapter("llava-hf/llava-1.5-7b-hf", local_files_only=True)
    assert "hf download llava-hf/llava-1.5-7b-hf" in str(info.value)


def test_wrong_model_class_is_a_config_error(llava_dir):
    with pytest.raises(ConfigError, match="LlavaNextForConditionalGeneration"):
        LlavaNextAdapter(LlavaForConditionalGeneration.from_pretrained(llava_dir))


BLANK = {"pixel_values": torch.zeros(3, 32, 32)}


def test_phrase_ids_follow_char_spans_in_unicode_text(adapter):
    encoded = adapter.encode_text([UNICODE_TEXT], [UNICODE_SPANS], [BLANK])
    assert [UNICODE_TEXT[s:e] for s, e in UNICODE_SPANS] == ["café", "猫 rouge", "gauche"]
    tokens = adapter.processor.tokenizer.convert_ids_to_tokens(encoded.input_ids[0])
    phrase_ids = encoded.phrase_ids[0].tolist()
    grounded = [[t for t, p in zip(tokens, phrase_ids, strict=True) if p == i] for i in range(3)]
    assert grounded == [["café"], ["猫", "rouge"], ["gauche"]]
    assert phrase_ids.count(-1) == len(tokens) - 4


def test_encode_text_expands_the_image_token_like_the_processor(adapter):
    batch = adapter.encode([_image(0), _image(1)], ["a dog", "the big red car"], [[(2, 5)], [(4, 15)]])
    prompts = [f"{adapter.prompt()} {text}" for text in ["a dog", "the big red car"]]
    reference = adapter.processor(
        images=[_image(0), _image(1)], text=prompts, padding=True, return_tensors="pt"
    )
    assert torch.equal(batch["input_ids"], reference["input_ids"])
    assert int((batch["input_ids"][0] == adapter.image_token_id).sum()) == 16


@pytest.mark.parametrize(
    ("spans", "message"),
    [([(0, 5), (3, 9)], "overlap"), ([(0, 99)], "inside the text"), ([(5, 6)], "covers no token")],
)
def test_bad_spans_are_rejected(adapter, spans, message):
    with pytest.raises(ValueError, match=message):
        adapter.encode_text(["a red dog"], [spans], [BLANK])


def test_llava_pads_to_square_whatever_image_processor_the_checkpoint_ships(llava_dir):
    """llava-hf checkpoints ship a CLIP-style processor (shortest edge, centre crop); LLaVA-1.5 was trained
    on padded squares, and the masks are placed as if padded: the image path pads, the whole image stays."""
    processor = AutoProcessor.from_pretrained(llava_dir)
    processor.image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, do_center_crop=True
    )
    adapter = LlavaAdapter(LlavaForConditionalGeneration.from_pretrained(llava_dir), processor=processor)
    image = np.zeros((20, 40, 3), dtype=np.uint8)
    image[:, 0] = image[:, -1] = 255  # white first and last columns: a centre crop would cut them
    out = adapter.image_transform()(image)
    meta, pixels = out["pad_meta"], out["lmm_image"]["pixel_values"]
    assert (meta["resized_h"], meta["resized_w"], meta["pad_top"], meta["pad_bottom"]) == (16, 32, 8, 8)
    assert pixels.shape == (3, 32, 32)
    assert pixels[:, :8].abs().max() < 0.02 and pixels[:, 24:].abs().max() < 0.02  # padded with the mean
    assert pixels[:, 8:24, 0].min() > 1.0 and pixels[:, 8:24, -1].min() > 1.0  # both white edges are in


def test_adapter_for_picks_the_family_from_the_checkpoint(llava_dir, tmp_path):
    assert type(adapter_for(llava_dir)) is LlavaAdapter
    assert type(adapter_for(LlavaForConditionalGeneration.from_pretrained(llava_dir))) is LlavaAdapter
    other = tmp_path / "other"
    other.mkdir()
    (other / "model.safetensors").write_bytes(b"")
    (other / "config.json").write_text('{"architectures": ["MllamaForConditionalGeneration"]}')
    with pytest.raises(ConfigError, match=r"no flmm adapter for 'MllamaForConditionalGeneration'.*Qwen2VL"):
        adapter_for(other)


def test_a_config_without_adapter_type_gets_the_checkpoints_family(tmp_path):
    from flmm.config import load_config
    from flmm.engine.build import build_adapter
    from flmm.lmm.tiny import build_tiny_llava_next

    folder = build_tiny_llava_next(tmp_path / "next")
    cfg = load_config(None, [f"model.lmm.model={folder}", "model.lmm.capture=eager"])
    assert "type" not in cfg.model.lmm
    adapter = build_adapter(cfg)
    assert type(adapter) is LlavaNextAdapter and adapter.capture == "eager"
